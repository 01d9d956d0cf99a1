"""How a validated job is executed: in an engine worker process (``lem.worker``, the default),
inline in this process (``run.isolation=inline``), or as several rank processes for data- and
tensor-parallel runs (``lem.distributed``).

Consecutive jobs of a sweep whose engine settings match share one loaded engine
(``run.reuse_engine``): the worker keeps it, or, inline, this process's ``EnginePool``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lem.config import Isolation, LemConfig

_POOL: Any = None
_WORKERS: Any = None


def engine_pool() -> Any:
    global _POOL
    if _POOL is None:
        from lem.backends.pool import EnginePool

        _POOL = EnginePool()
    return _POOL


def workers() -> Any:
    global _WORKERS
    if _WORKERS is None:
        import multiprocessing.util

        from lem.worker import WorkerManager

        _WORKERS = WorkerManager()
        # Stop the (non-daemonic) worker before multiprocessing joins its children at exit, or exit hangs.
        # A finalizer with a priority runs first both at interpreter exit (atexit) and at the end of a
        # process that multiprocessing started itself (a joblib/loky worker, which never runs atexit).
        multiprocessing.util.Finalize(None, _WORKERS.stop, exitpriority=10)
    return _WORKERS


def execute_job(cfg: LemConfig, composed_cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Run one measured job into ``run_dir`` and return its summary."""
    from lem import distributed
    from lem.pipeline import report_summary, run_measurement

    if distributed.world_size(cfg) == 1:
        if cfg.run.isolation is Isolation.inline:
            if _WORKERS is not None:
                _WORKERS.stop()
            summary = run_measurement(cfg, composed_cfg, run_dir, engines=engine_pool())
            assert summary is not None
            return summary
        engine_pool().clear()
        return workers().run(cfg, _plain(composed_cfg), run_dir)
    if distributed.launched_by_torchrun():
        return distributed.run_rank(cfg, composed_cfg, run_dir, summarize=True) or {}
    from lem.models.resolve import resolve_model_path

    engine_pool().clear()  # the ranks load their own engines; free this process's before they start
    if _WORKERS is not None:
        _WORKERS.stop()
    resolve_model_path(cfg.model)  # convert/cache once here, not in every rank at the same time
    distributed.run_ranks(cfg, _plain(composed_cfg), run_dir)
    return report_summary(cfg, run_dir)


def _plain(composed_cfg: Any) -> Any:
    """The composed config as plain containers, resolved: what crosses into another process."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(composed_cfg, resolve=True) if OmegaConf.is_config(composed_cfg) else composed_cfg
