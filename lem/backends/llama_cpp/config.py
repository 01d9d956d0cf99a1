"""backend=llama_cpp: llama-cpp-python's ``Llama(...)`` arguments (``backend.llama_cpp.*``) and checks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lem.backends.base import Engine
from lem.config.rules import at_least, nvidia_gpu_present, require_package
from lem.config.types import (
    EMBEDDED_MODEL,
    Device,
    DType,
    Quantization,
    ShardingStrategy,
)
from lem.errors import ConfigError

if TYPE_CHECKING:
    from lem.config.schema import LemConfig


@dataclass
class LlamaCppConfig:
    """llama-cpp-python ``Llama(...)`` arguments."""

    model_path: str | None = None  # a GGUF file; None: the embedded model's GGUF
    n_threads: int | None = None  # None: llama.cpp's default
    n_batch: int = 512
    n_ctx: int | None = None  # None: dataset.max_input_tokens + dataset.max_output_tokens
    n_gpu_layers: int = 0
    flash_attn: bool = False
    llama_args: dict[str, Any] = field(default_factory=dict)  # any other Llama(...) argument, passed through


def check(cfg: LemConfig) -> None:
    lc, ds, p = cfg.backend.llama_cpp, cfg.dataset, cfg.precision
    if cfg.sharding.strategy is not ShardingStrategy.none:
        raise ConfigError("sharding.strategy", cfg.sharding.strategy.value, "none with backend=llama_cpp (one process on one device; n_gpu_layers offloads to one GPU)")
    if lc.model_path is None:
        if cfg.model.name_or_path != EMBEDDED_MODEL:
            raise ConfigError("backend.llama_cpp.model_path", None, f"a .gguf file of model.name_or_path={cfg.model.name_or_path} (only {EMBEDDED_MODEL} has a default GGUF)")
    else:
        path = os.path.expanduser(lc.model_path)
        if not path.lower().endswith(".gguf") or not os.path.isfile(path):
            raise ConfigError("backend.llama_cpp.model_path", lc.model_path, "an existing .gguf file")
        if cfg.model.name_or_path == EMBEDDED_MODEL and not _is_embedded_gguf(path):
            # The tokenizer, chat template, FLOPs and the run's model name come from model.name_or_path.
            raise ConfigError("model.name_or_path", EMBEDDED_MODEL, f"the model in {lc.model_path}: its Hugging Face id or directory, or the directory holding the .gguf")
    if lc.n_threads is not None:
        at_least("backend.llama_cpp.n_threads", lc.n_threads, 1)
    at_least("backend.llama_cpp.n_batch", lc.n_batch, 1)
    needed = ds.max_input_tokens + ds.max_output_tokens
    if lc.n_ctx is not None and lc.n_ctx < needed:
        raise ConfigError("backend.llama_cpp.n_ctx", lc.n_ctx, f"at least dataset.max_input_tokens + dataset.max_output_tokens ({needed}), or null for exactly that")
    at_least("backend.llama_cpp.n_gpu_layers", lc.n_gpu_layers, -1)
    if lc.n_gpu_layers != 0:
        if cfg.backend.device is Device.cpu:
            raise ConfigError("backend.llama_cpp.n_gpu_layers", lc.n_gpu_layers, "0 on backend.device=cpu")
        if not nvidia_gpu_present():
            raise ConfigError("backend.llama_cpp.n_gpu_layers", lc.n_gpu_layers, "0 on a machine without an NVIDIA GPU (llama.cpp offloads layers to CUDA only)")
    elif cfg.backend.device is Device.cuda:
        raise ConfigError("backend.device", "cuda", "cpu or auto while backend.llama_cpp.n_gpu_layers=0; offload to the GPU with backend.llama_cpp.n_gpu_layers=-1")
    for key in ("model_path", "n_threads", "n_batch", "n_ctx", "n_gpu_layers", "flash_attn"):
        if key in lc.llama_args:
            raise ConfigError(f"backend.llama_cpp.llama_args.{key}", lc.llama_args[key], f"no value here: set backend.llama_cpp.{key}")
    if p.quantization is not Quantization.none:
        raise ConfigError("precision.quantization", p.quantization.value, "none with backend=llama_cpp: a GGUF carries its own quantisation (pick another .gguf, e.g. a Q8_0 file)")
    if p.dtype is not DType.auto:
        raise ConfigError("precision.dtype", p.dtype.value, "auto with backend=llama_cpp: a GGUF's tensors keep the types they were stored in (pick another .gguf, e.g. an F16 file)")
    # Last, so the settings are checked even where the package is not installed yet.
    require_package("backend.name", "llama_cpp", "llama_cpp", 'pip install -e ".[llamacpp]": it compiles llama.cpp, about 9 minutes on 2 cores')


def _is_embedded_gguf(path: str) -> bool:
    from lem.errors import LemError
    from lem.models.embedded import find_embedded_gguf  # standard library only: cheap

    try:
        return os.path.samefile(path, find_embedded_gguf().gguf_path)
    except (LemError, OSError):
        return False


ENGINE = Engine("llama_cpp", LlamaCppConfig, "lem.backends.llama_cpp.engine:LlamaCppBackend", check)
