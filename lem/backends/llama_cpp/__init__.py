"""llama_cpp engine: config.py (its knobs and checks), engine.py (the adapter), sampler.py (its C sampler chain) and gguf.py (GGUF and vocabulary helpers)."""
