"""backend=vllm: vLLM's engine arguments (``backend.vllm.*``) and checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lem.backends.base import Engine
from lem.backends.serving import check_passthrough, check_serving_engine, require_gpus
from lem.config.rules import at_least, in_range, require_package
from lem.errors import ConfigError

if TYPE_CHECKING:
    from lem.config.schema import LemConfig

VLLM_INSTALL = 'pip install -e ".[vllm]" on a CUDA machine'


@dataclass
class VllmConfig:
    """vLLM engine arguments (``vllm.EngineArgs``); None leaves vLLM's own default."""

    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None  # None: dataset.max_input_tokens + dataset.max_output_tokens
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool | None = None
    enforce_eager: bool = False
    kv_cache_dtype: str = "auto"
    quantization: str | None = None  # e.g. awq, gptq, fp8 (vLLM's names)
    speculative_config: dict[str, Any] | None = None  # vLLM's speculative_config dict, passed as is
    tensor_parallel_size: int | None = None  # None: from sharding
    pipeline_parallel_size: int | None = None  # None: from sharding
    engine_args: dict[str, Any] = field(default_factory=dict)  # any other EngineArgs field, passed through


# Engine arguments lem sets itself, and the option that sets them: a passthrough may not override them.
_VLLM_OWNED_ARGS = {
    "model": "model.name_or_path",
    "tokenizer": "model.name_or_path",
    "revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code",
    "dtype": "precision.dtype",
    "seed": "run.seed",
    "tensor_parallel_size": "sharding.* or backend.vllm.tensor_parallel_size",
    "pipeline_parallel_size": "sharding.* or backend.vllm.pipeline_parallel_size",
    "data_parallel_size": "nothing (data parallelism is not implemented for vLLM)",
    **{
        name: f"backend.vllm.{name}"
        for name in (
            "gpu_memory_utilization", "max_model_len", "max_num_seqs", "max_num_batched_tokens",
            "enable_prefix_caching", "enforce_eager", "kv_cache_dtype", "quantization", "speculative_config",
        )
    },
}


def check(cfg: LemConfig) -> None:
    v = cfg.backend.vllm
    tp_pp = check_serving_engine(cfg, "vllm", "backend.vllm.quantization (vLLM's own methods: awq, gptq, fp8, bitsandbytes, ...)")
    in_range("backend.vllm.gpu_memory_utilization", v.gpu_memory_utilization, 0.0, 1.0, low_open=True)
    for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
        if getattr(v, name) is not None:
            at_least(f"backend.vllm.{name}", getattr(v, name), 1)
    need = cfg.dataset.max_input_tokens + cfg.dataset.max_output_tokens
    if v.max_model_len is not None and v.max_model_len < need:
        # A shorter context would cut requests short of max_output_tokens: unequal terms across engines.
        raise ConfigError("backend.vllm.max_model_len", v.max_model_len, f"at least dataset.max_input_tokens + dataset.max_output_tokens ({need})")
    if cfg.decoder.do_sample and cfg.decoder.temperature > 2.0:
        raise ConfigError("decoder.temperature", cfg.decoder.temperature, "a number in (0.0, 2.0] with backend=vllm (vLLM's limit)")
    check_passthrough("backend.vllm.engine_args", v.engine_args, _VLLM_OWNED_ARGS)
    require_package("backend.name", "vllm", "vllm", VLLM_INSTALL)
    require_gpus("vllm", tp_pp[0] * tp_pp[1])


ENGINE = Engine("vllm", VllmConfig, "lem.backends.vllm.engine:VllmBackend", check)
