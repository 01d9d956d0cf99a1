"""The engines lem can measure. Adding one: a folder ``lem/backends/<name>/`` with ``config.py``
(its knobs as a dataclass and ``check(cfg)``) and ``engine.py`` (the adapter), and its name here.

Each engine's ``config.py`` defines ``ENGINE = Engine(...)``: its dataclass becomes
``backend.<name>.*`` in the schema and ``backend=<name>`` an option of Hydra's ``backend``
group (``lem.config.schema``); its ``check`` runs from ``lem.config.checks.check_backend``;
its adapter class is imported only when a run starts (``create_engine``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lem.backends.base import Engine, EngineSpec

if TYPE_CHECKING:
    from lem.backends.base import Backend
    from lem.config.schema import LemConfig

ENGINE_NAMES = ("pytorch", "vllm", "tensorrt", "llama_cpp")  # backend=<name>; the first is the default


ENGINES: dict[str, Engine] = {name: importlib.import_module(f"lem.backends.{name}.config").ENGINE for name in ENGINE_NAMES}


def create_engine(cfg: LemConfig) -> Backend:
    """The adapter for ``cfg.backend.name``, given only the config sections it needs; cheap (the
    engine's libraries load in its ``init_engine``)."""
    return ENGINES[cfg.backend.name.value].adapter_class()(EngineSpec.of(cfg))


def scheduling(name: str) -> str:
    """How engine ``name`` is handed requests: "batch" (lem's batches), "continuous" or "serial"."""
    return ENGINES[name].adapter_class().scheduling if name in ENGINES else "batch"
