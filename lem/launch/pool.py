"""Engine reuse across consecutive jobs of one process (a Hydra sweep, an Optuna study).

Loading an engine is the setup stage; jobs that differ only in runtime settings (batch size,
decoder, traffic, dataset) can share one. The pool keeps at most one engine: a job whose
engine settings match takes it, a job whose settings differ unloads it first. A job that
takes a reused engine measures no engine_init/model_load phases (the job that loaded it
reported them) and says so in its header (``engine_reused``).
"""

from __future__ import annotations

import json
from typing import Any

from lem.backends.base import EngineSpec, unload_quietly
from lem.config.schema import LemConfig


def engine_key(cfg: LemConfig) -> str:
    """Everything that goes into constructing the engine: model, backend, precision, sharding, seed."""
    from lem.study.identity import plain_values as plain

    parts = {
        "model": plain(cfg.model),
        "backend": plain(cfg.backend),
        "precision": plain(cfg.precision),
        "sharding": plain(cfg.sharding),
        "seed": cfg.run.seed,
    }
    return json.dumps(parts, sort_keys=True)


class EnginePool:
    """Holds the last job's loaded engine for the next job with the same ``engine_key``."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._backend: Any = None

    def take(self, cfg: LemConfig) -> tuple[Any, bool]:
        """``(backend, True)`` when a loaded engine matches ``cfg``; else ``(None, False)`` (any other is unloaded)."""
        if self._backend is None:
            return None, False
        if cfg.run.reuse_engine and self._key == engine_key(cfg):
            backend, self._backend, self._key = self._backend, None, None
            backend.spec = EngineSpec.of(cfg)  # this job's sections (prompt and output limits)
            return backend, True
        self.clear()
        return None, False

    def give_back(self, cfg: LemConfig, backend: Any) -> None:
        """After a successful job: keep the engine for the next job, or unload it."""
        if cfg.run.reuse_engine:
            self.clear()
            self._key, self._backend = engine_key(cfg), backend
        else:
            unload_quietly(backend)

    def clear(self) -> None:
        if self._backend is not None:
            unload_quietly(self._backend)
        self._key, self._backend = None, None
