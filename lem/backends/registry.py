"""The engines lem can measure. Adding one: a folder ``lem/backends/<name>/`` with ``config.py``
(its knobs as a dataclass and ``check(cfg)``) and ``engine.py`` (the adapter), and its name here.

Each engine's ``config.py`` defines ``ENGINE = Engine(...)``: its dataclass becomes
``backend.<name>.*`` in the schema and ``backend=<name>`` an option of Hydra's ``backend``
group (``lem.config.schema``); its ``check`` runs from ``lem.config.checks.check_backend``;
its adapter class is imported only when a run starts (``create_engine``).
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import TYPE_CHECKING

from lem.backends.base import Engine, EngineSpec
from lem.config.types import BatchingStrategy

if TYPE_CHECKING:
    from lem.backends.base import Backend
    from lem.config.schema import BatchingConfig, LemConfig

ENGINE_NAMES = ("pytorch", "vllm", "tensorrt", "llama_cpp", "openai")  # backend=<name>; the first is the default


ENGINES: dict[str, Engine] = {name: importlib.import_module(f"lem.backends.{name}.config").ENGINE for name in ENGINE_NAMES}


def create_engine(cfg: LemConfig) -> Backend:
    """The adapter for ``cfg.backend.name``, given only the config sections it needs; cheap (the
    engine's libraries load in its ``init_engine``)."""
    return ENGINES[cfg.backend.name.value].adapter_class()(EngineSpec.of(cfg))


def scheduling(name: str) -> str:
    """How engine ``name`` is handed requests: "batch" (lem's batches), "continuous" or "serial"."""
    return ENGINES[name].adapter_class().scheduling if name in ENGINES else "batch"


def self_parallel(name: str) -> bool:
    """Whether engine ``name`` starts its own processes for tensor/pipeline parallelism (``Engine.self_parallel``)."""
    return name in ENGINES and ENGINES[name].self_parallel


def process_count(cfg: LemConfig) -> int:
    """How many lem processes a job runs as: 1 for a self-parallel engine (it starts its own GPU
    workers for tp x pp), else ``cfg.sharding.world_size`` (PyTorch: a rank per shard or replica)."""
    return 1 if self_parallel(cfg.backend.name.value) else cfg.sharding.world_size


def effective_batching(cfg: LemConfig) -> BatchingConfig:
    """``cfg.batching`` with ``strategy=auto`` resolved for the engine: static where lem forms the
    batches, continuous where the engine schedules requests itself; a serial engine (llama.cpp)
    is always handed one request at a time, whatever the strategy asks."""
    b, how = cfg.batching, scheduling(cfg.backend.name.value)
    if how == "serial":
        return replace(b, strategy=BatchingStrategy.continuous, batch_size=1, max_tokens_per_batch=None)
    if b.strategy is BatchingStrategy.auto:
        return replace(b, strategy=BatchingStrategy.continuous if how == "continuous" else BatchingStrategy.static)
    return b
