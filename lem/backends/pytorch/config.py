"""backend=pytorch: Hugging Face Transformers' ``model.generate`` — its knobs (``backend.pytorch.*``) and checks."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from lem.backends.base import Engine
from lem.config.rules import at_least, require_package, resolve_device
from lem.config.types import Device, Quantization, ShardingStrategy
from lem.errors import ConfigError

if TYPE_CHECKING:
    from lem.config.schema import LemConfig


class AttnImplementation(Enum):
    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"


@dataclass
class PyTorchConfig:
    attn_implementation: AttnImplementation = AttnImplementation.sdpa
    use_cache: bool = True
    torch_compile: bool = False
    # None: torch's default; on a shared CPU set it explicitly for repeatable numbers.
    num_threads: int | None = None


def check(cfg: LemConfig) -> None:
    pt, be = cfg.backend.pytorch, cfg.backend
    _check_sharding(cfg)
    if pt.num_threads is not None:
        at_least("backend.pytorch.num_threads", pt.num_threads, 1)
    if pt.attn_implementation is AttnImplementation.flash_attention_2:
        if be.device is Device.cpu:
            raise ConfigError("backend.pytorch.attn_implementation", "flash_attention_2", "sdpa or eager on backend.device=cpu")
        require_package("backend.pytorch.attn_implementation", "flash_attention_2", "flash_attn", "pip install flash-attn")


def _check_sharding(cfg: LemConfig) -> None:
    """How the PyTorch backend spreads a run over devices (lem.launch.ranks launches the processes)."""
    s = cfg.sharding
    if s.strategy is ShardingStrategy.data_parallel:
        if s.num_processes < 2:
            raise ConfigError("sharding.num_processes", s.num_processes, "a number >= 2 replicas with sharding.strategy=data_parallel")
        if s.num_shards != 1:
            raise ConfigError("sharding.num_shards", s.num_shards, "1 with data_parallel (each replica holds the whole model)")
        if cfg.dataset.n_prompts < s.num_processes:
            raise ConfigError("dataset.n_prompts", cfg.dataset.n_prompts, f"at least one prompt per replica (>= {s.num_processes})")
        needed = s.num_processes
    elif s.strategy in (ShardingStrategy.tensor_parallel, ShardingStrategy.pipeline_parallel):
        if s.num_shards < 2:
            raise ConfigError("sharding.num_shards", s.num_shards, f"a number >= 2 devices with sharding.strategy={s.strategy.value}")
        if s.num_processes != 1:
            raise ConfigError(
                "sharding.num_processes", s.num_processes, f"1 with {s.strategy.value} (data parallel over sharded replicas is not supported)"
            )
        if cfg.precision.quantization is not Quantization.none:
            raise ConfigError("precision.quantization", cfg.precision.quantization.value, f"none with sharding.strategy={s.strategy.value}")
        needed = s.num_shards
    else:
        return
    on_cuda = resolve_device(cfg.backend.device) is Device.cuda
    if s.strategy is ShardingStrategy.pipeline_parallel and not on_cuda:
        raise ConfigError("sharding.strategy", "pipeline_parallel", "tensor_parallel or data_parallel on a CPU (pipeline parallel splits layers over CUDA GPUs)")
    if on_cuda:
        import torch

        if torch.cuda.device_count() < needed:
            raise ConfigError(f"sharding.{'num_processes' if s.strategy is ShardingStrategy.data_parallel else 'num_shards'}", needed, f"at most the {torch.cuda.device_count()} CUDA GPU(s) visible here")


ENGINE = Engine("pytorch", PyTorchConfig, "lem.backends.pytorch.engine:PyTorchBackend", check)
