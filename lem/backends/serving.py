"""What the GPU serving engines (vLLM, TensorRT-LLM) share: their config checks (devices, parallel sizes,
passthroughs) and the skeleton of their adapters (``ServingEngine``)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from lem.backends.base import (
    EngineDescription,
    EngineSpec,
    LoadedTokenizer,
    RawGeneration,
    serve_together,
)
from lem.backends.cuda import cuda_device_names, empty_cuda_cache
from lem.config.rules import at_least
from lem.config.types import Quantization, ShardingStrategy
from lem.errors import ConfigError

if TYPE_CHECKING:
    from lem.config.schema import LemConfig, ShardingConfig
    from lem.workload.types import GenerationParams, PreparedRequest


def engine_parallel_sizes(sharding: ShardingConfig, options: Any, engine: str) -> tuple[int, int]:
    """(tensor, pipeline) parallel sizes for backend=vllm/tensorrt, checked against sharding.*.

    sharding.strategy/num_shards decide them; backend.<engine>.*_parallel_size may set them
    explicitly (e.g. a tp x pp split), but their product must equal sharding.num_shards, which
    is also how many GPUs the energy meter watches.
    """
    s = sharding
    if s.strategy is ShardingStrategy.data_parallel or s.num_processes != 1:
        raise ConfigError(
            "sharding.strategy", s.strategy.value,
            f"none, tensor_parallel or pipeline_parallel with backend={engine} (data parallelism is not implemented for this engine)",
        )
    tp = s.num_shards if s.strategy is ShardingStrategy.tensor_parallel else 1
    pp = s.num_shards if s.strategy is ShardingStrategy.pipeline_parallel else 1
    if options.tensor_parallel_size is not None:
        at_least(f"backend.{engine}.tensor_parallel_size", options.tensor_parallel_size, 1)
        tp = options.tensor_parallel_size
    if options.pipeline_parallel_size is not None:
        at_least(f"backend.{engine}.pipeline_parallel_size", options.pipeline_parallel_size, 1)
        pp = options.pipeline_parallel_size
    if tp * pp != s.num_shards:
        name = "tensor_parallel_size" if options.tensor_parallel_size is not None else "pipeline_parallel_size"
        raise ConfigError(
            f"backend.{engine}.{name}", getattr(options, name),
            f"tensor_parallel_size x pipeline_parallel_size = sharding.num_shards ({s.num_shards}); "
            "set sharding.strategy and sharding.num_shards to match, so the energy meter watches every GPU the engine uses",
        )
    return tp, pp


def check_serving_engine(cfg: LemConfig, engine: str, quantization_hint: str) -> tuple[int, int]:
    """Checks shared by the GPU serving engines; returns (tp, pp)."""
    quant = cfg.precision.quantization
    if quant is not Quantization.none:
        # precision.quantization means bitsandbytes in Transformers; each engine has its own methods.
        raise ConfigError("precision.quantization", quant.value, f"none with backend={engine} (bitsandbytes is a PyTorch option); use {quantization_hint}")
    return engine_parallel_sizes(cfg.sharding, getattr(cfg.backend, engine), engine)


def check_passthrough(key: str, passthrough: dict[str, Any], owned: dict[str, str]) -> None:
    """Refuse a passthrough argument that lem sets itself from one of its own options."""
    for name, value in passthrough.items():
        if name in owned:
            raise ConfigError(f"{key}.{name}", value, f"no value here: lem sets it from {owned[name]}")


def require_gpus(engine: str, n_gpus: int) -> None:
    import torch  # only reached for the GPU engines, after every config-only check passed

    if not torch.cuda.is_available():
        raise ConfigError("backend.name", engine, "a machine with a CUDA GPU visible to torch (none found); use backend=pytorch here")
    available = torch.cuda.device_count()
    if n_gpus > available:
        raise ConfigError("sharding.num_shards", n_gpus, f"at most {available}, the number of CUDA GPUs visible here")


class ServingEngine(LoadedTokenizer):
    """The adapter skeleton of an engine that schedules requests itself: lem hands each request over
    when ``lem.workload.admission`` says (``serve``); ``self._llm`` is the engine object ``load_model`` builds."""

    scheduling = "continuous"  # the engine schedules requests itself; lem hands them over at arrival
    engine_name: ClassVar[str]  # backend=<engine_name>

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._llm: Any = None
        self._model_path: str | None = None

    def generate(self, batch: Sequence[PreparedRequest], params: GenerationParams) -> list[RawGeneration]:
        return serve_together(self, batch, params)

    def _require_llm(self) -> Any:
        if self._llm is None:
            raise RuntimeError("load_model() must run before serve()")
        return self._llm

    def _description(
        self, engine_version: str, dtype: str, extra: dict[str, Any], device_type: str = "cuda", device_names: list[str] | None = None
    ) -> EngineDescription:
        if device_names is None:
            tp, pp = engine_parallel_sizes(self.spec.sharding, self.spec.options, self.engine_name)
            device_names = cuda_device_names(tp * pp)
        return EngineDescription(
            engine=self.engine_name,
            engine_version=engine_version,
            device_type=device_type,
            device_names=device_names,
            dtype=dtype,
            num_threads=None,
            extra=extra,
        )

    def _free_llm(self, shutdown: Callable[[Any], None]) -> None:
        """Drop the engine object after ``shutdown(llm)`` stopped its processes, and free GPU memory."""
        llm, self._llm = self._llm, None
        if llm is not None:
            shutdown(llm)
        del llm
        gc.collect()
        empty_cuda_cache()
