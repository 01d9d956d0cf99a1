"""pytorch engine: config.py (its knobs and checks) and engine.py (the adapter)."""
