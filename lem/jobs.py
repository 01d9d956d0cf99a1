"""How a validated job is executed: inline in this process, reusing a loaded engine when it can.

One ``EnginePool`` per process, so consecutive jobs of a sweep whose engine settings match
share one loaded engine (``run.reuse_engine``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lem.config import LemConfig

_POOL: Any = None


def engine_pool() -> Any:
    global _POOL
    if _POOL is None:
        from lem.backends.pool import EnginePool

        _POOL = EnginePool()
    return _POOL


def execute_job(cfg: LemConfig, composed_cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Run one measured job into ``run_dir`` and return its summary."""
    from lem.pipeline import run_measurement

    return run_measurement(cfg, composed_cfg, run_dir, engines=engine_pool())
