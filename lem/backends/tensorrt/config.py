"""backend=tensorrt: TensorRT-LLM's ``LLM`` API arguments (``backend.tensorrt.*``) and checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from lem.backends.base import Engine
from lem.backends.serving import check_passthrough, check_serving_engine, require_gpus
from lem.config.rules import at_least, in_range, require_package
from lem.config.types import Device
from lem.errors import ConfigError

if TYPE_CHECKING:
    from lem.config.schema import LemConfig

TENSORRT_INSTALL = "pip install tensorrt_llm --extra-index-url https://pypi.nvidia.com on a CUDA machine"


class TensorRTRuntime(Enum):
    pytorch = "pytorch"  # tensorrt_llm.LLM: TensorRT-LLM 1.x's default PyTorch runtime
    trt_engine = "trt_engine"  # tensorrt_llm._tensorrt_engine.LLM: builds a TensorRT engine (BuildConfig, QuantConfig)


@dataclass
class TensorRTConfig:
    """TensorRT-LLM ``LLM`` API arguments; None leaves TensorRT-LLM's own default."""

    runtime: TensorRTRuntime = TensorRTRuntime.pytorch
    max_batch_size: int | None = None
    max_input_len: int | None = None  # None: dataset.max_input_tokens
    max_seq_len: int | None = None  # None: dataset.max_input_tokens + dataset.max_output_tokens
    max_num_tokens: int | None = None
    kv_cache_free_gpu_memory_fraction: float = 0.9
    tensor_parallel_size: int | None = None  # None: from sharding
    pipeline_parallel_size: int | None = None  # None: from sharding
    quantization: str | None = None  # a QuantAlgo name, e.g. FP8, W4A16_AWQ
    llm_args: dict[str, Any] = field(default_factory=dict)  # any other LLM(...) argument, passed through


_TENSORRT_OWNED_ARGS = {
    "model": "model.name_or_path",
    "tokenizer": "model.name_or_path",
    "revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code",
    "dtype": "precision.dtype",
    "backend": "backend.tensorrt.runtime",
    "tensor_parallel_size": "sharding.* or backend.tensorrt.tensor_parallel_size",
    "pipeline_parallel_size": "sharding.* or backend.tensorrt.pipeline_parallel_size",
    "quant_config": "backend.tensorrt.quantization",
    **{name: f"backend.tensorrt.{name}" for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens")},
}
# Nested dicts the TensorRT-LLM passthrough may hold, minus the keys lem sets inside them.
_TENSORRT_OWNED_NESTED = {
    "kv_cache_config": {"free_gpu_memory_fraction": "backend.tensorrt.kv_cache_free_gpu_memory_fraction"},
    "build_config": {name: f"backend.tensorrt.{name}" for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens")},
}


def check(cfg: LemConfig) -> None:
    t = cfg.backend.tensorrt
    if cfg.backend.device is Device.cpu:
        raise ConfigError("backend.device", "cpu", "auto or cuda with backend=tensorrt (it runs on NVIDIA GPUs only)")
    tp_pp = check_serving_engine(
        cfg, "tensorrt", "backend.tensorrt.quantization (a TensorRT-LLM QuantAlgo name such as FP8 or W4A16_AWQ, with backend.tensorrt.runtime=trt_engine)"
    )
    in_range("backend.tensorrt.kv_cache_free_gpu_memory_fraction", t.kv_cache_free_gpu_memory_fraction, 0.0, 1.0, low_open=True)
    for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens"):
        if getattr(t, name) is not None:
            at_least(f"backend.tensorrt.{name}", getattr(t, name), 1)
    ds = cfg.dataset
    if t.max_input_len is not None and t.max_input_len < ds.max_input_tokens:
        raise ConfigError("backend.tensorrt.max_input_len", t.max_input_len, f"at least dataset.max_input_tokens ({ds.max_input_tokens})")
    need = ds.max_input_tokens + ds.max_output_tokens
    if t.max_seq_len is not None and t.max_seq_len < need:
        raise ConfigError("backend.tensorrt.max_seq_len", t.max_seq_len, f"at least dataset.max_input_tokens + dataset.max_output_tokens ({need})")
    if t.quantization is not None:
        if not t.quantization.strip():
            raise ConfigError("backend.tensorrt.quantization", t.quantization, "null or a QuantAlgo name such as FP8 or W4A16_AWQ")
        if t.runtime is TensorRTRuntime.pytorch:
            raise ConfigError(
                "backend.tensorrt.quantization", t.quantization,
                "null with backend.tensorrt.runtime=pytorch (that runtime takes quantisation from the checkpoint, "
                "e.g. a ModelOpt FP8 model); set backend.tensorrt.runtime=trt_engine to build a quantised TensorRT engine",
            )
    check_passthrough("backend.tensorrt.llm_args", t.llm_args, _TENSORRT_OWNED_ARGS)
    for nested, owned in _TENSORRT_OWNED_NESTED.items():
        value = t.llm_args.get(nested)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"backend.tensorrt.llm_args.{nested}", value, "a mapping of its fields (lem builds the object)")
        check_passthrough(f"backend.tensorrt.llm_args.{nested}", value or {}, owned)
    if "build_config" in t.llm_args and t.runtime is TensorRTRuntime.pytorch:
        raise ConfigError("backend.tensorrt.llm_args.build_config", t.llm_args["build_config"], "nothing with backend.tensorrt.runtime=pytorch (a BuildConfig is for trt_engine)")
    require_package("backend.name", "tensorrt", "tensorrt_llm", TENSORRT_INSTALL)
    require_gpus("tensorrt", tp_pp[0] * tp_pp[1])


ENGINE = Engine("tensorrt", TensorRTConfig, "lem.backends.tensorrt.engine:TensorRTBackend", check, self_parallel=True)
