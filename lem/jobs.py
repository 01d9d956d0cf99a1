"""How a validated job is executed: inline in this process (reusing a loaded engine when it can),
or as several rank processes for data- and tensor-parallel runs (``lem.distributed``).

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
    from lem import distributed
    from lem.pipeline import report_summary, run_measurement

    if distributed.world_size(cfg) == 1:
        summary = run_measurement(cfg, composed_cfg, run_dir, engines=engine_pool())
        assert summary is not None
        return summary
    if distributed.launched_by_torchrun():
        return distributed.run_rank(cfg, composed_cfg, run_dir, summarize=True) or {}
    from omegaconf import OmegaConf

    from lem.models.resolve import resolve_model_path

    engine_pool().clear()  # the ranks load their own engines; free this process's before they start
    resolve_model_path(cfg.model)  # convert/cache once here, not in every rank at the same time
    composed = OmegaConf.to_container(composed_cfg, resolve=True) if OmegaConf.is_config(composed_cfg) else composed_cfg
    distributed.run_ranks(cfg, composed, run_dir)
    return report_summary(cfg, run_dir)
