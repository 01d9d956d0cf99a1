"""Engine adapters. ``create_backend`` imports the chosen engine's module only when a run starts."""

from __future__ import annotations

from lem.backends.base import Backend, EngineDescription, RawGeneration
from lem.config import BackendName, LemConfig
from lem.errors import ConfigError

__all__ = ["Backend", "EngineDescription", "RawGeneration", "create_backend"]


def create_backend(cfg: LemConfig) -> Backend:
    """The adapter for ``cfg.backend.name``; cheap: torch/transformers load in its ``init_engine``."""
    name = cfg.backend.name
    if name is BackendName.pytorch:
        from lem.backends.pytorch import PyTorchBackend

        return PyTorchBackend(cfg)
    if name is BackendName.llama_cpp:
        from lem.backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(cfg)
    if name is BackendName.vllm:
        from lem.backends.vllm import VllmBackend

        return VllmBackend(cfg)
    if name is BackendName.tensorrt:
        from lem.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(cfg)
    raise ConfigError("backend.name", name.value, "pytorch (other engines are not implemented yet)")
