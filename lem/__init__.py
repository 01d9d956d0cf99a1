"""lem — measure the energy, throughput, latency and FLOPs of LLM inference."""

__version__ = "0.1.0"
