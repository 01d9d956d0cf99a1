"""Log one job's finished run folder (a single run or one job of a sweep) from the job's process.

The job runs and writes its folder; then :func:`log_finished_job` logs that folder — FINISHED,
or FAILED with its traceback (also kept as ``error.txt`` in the folder). Tracking never breaks
a run: an unreachable store gives one warning and the local results stay complete.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lem.plain import plain_config
from lem.session import current
from lem.tracking.store import (
    ENV_PARENT_RUN_ID,
    ENV_SWEEP_ID,
    Target,
    TrackingUnavailable,
    target_from_config,
)


def _key(run_dir: str | os.PathLike[str]) -> str:
    return str(Path(run_dir).resolve())


def is_handled(run_dir: str | os.PathLike[str]) -> bool:
    return _key(run_dir) in current().tracking.logged_run_dirs


def sweep_context() -> tuple[str | None, str | None, int | None, Path | None]:
    """``(parent_run_id, sweep_id, job_num, sweep_dir)`` of the current job, Nones outside a sweep.

    The parent arrives through the environment (set by the callback in this process or
    inherited from the launcher) or, for a job on another node, through the sweep
    directory's ``.lem_sweep.json``.
    """
    parent, sweep_id = os.environ.get(ENV_PARENT_RUN_ID) or None, os.environ.get(ENV_SWEEP_ID) or None
    job_num, sweep_dir = None, None
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            if hc.mode == RunMode.MULTIRUN:
                job_num = int(hc.job.num)
                sweep_dir = Path(hc.sweep.dir)
                if not sweep_dir.is_absolute():
                    sweep_dir = Path(hc.runtime.cwd) / sweep_dir
    except Exception:  # noqa: BLE001 - outside a Hydra job
        pass
    if sweep_dir is not None and (parent is None or sweep_id is None):
        from lem.tracking.sweep import read_sweep_file

        info = read_sweep_file(sweep_dir) or {}
        parent = parent or info.get("parent_run_id")
        sweep_id = sweep_id or info.get("sweep_id")
    return parent, sweep_id, job_num, sweep_dir


JOB_PARENT_FILE = ".lem_parent.json"  # in a job folder: the sweep parent run (and sweep id) it belongs to


def record_parent(run_dir: Path) -> None:
    """Write ``run_dir/.lem_parent.json`` naming the job's sweep parent, when it has one."""
    import json

    parent, sweep_id, _, _ = sweep_context()
    if parent and run_dir.is_dir():
        (run_dir / JOB_PARENT_FILE).write_text(json.dumps({"parent_run_id": parent, "sweep_id": sweep_id}) + "\n")


def recorded_parent(run_dir: Path) -> dict[str, Any]:
    """What :func:`record_parent` wrote (``{}`` for a folder without it)."""
    import json

    try:
        data = json.loads((run_dir / JOB_PARENT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _task_overrides(cfg: Any) -> list[str] | None:
    """The job's command-line overrides from Hydra's node (for a job whose folder holds no .hydra/)."""
    try:
        task = cfg.hydra.overrides.task
    except Exception:  # noqa: BLE001 - no hydra node: the caller's config is not a job config
        task = None
    if task is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            task = HydraConfig.get().overrides.task if HydraConfig.initialized() else None
        except Exception:  # noqa: BLE001
            task = None
    return [str(x) for x in task] if task is not None else None


def log_job(composed_cfg: Any, run_dir: str | os.PathLike[str], *, error_text: str | None = None, target: Target | None = None) -> str | None:
    """Log this job's run directory (as a child when in a sweep); return the MLflow run id, or None."""
    from lem.tracking.mlflow_sink import log_run_dir
    from lem.tracking.store import warn_logging_failed, warn_unavailable

    current().tracking.logged_run_dirs.add(_key(run_dir))
    if target is None:
        target = target_from_config(composed_cfg)
    if target is None:
        return None
    parent, sweep_id, job_num, sweep_dir = sweep_context()
    # The config file the run wrote wins, so a run logged now and one synced later get the same params.
    has_config_file = any((Path(run_dir) / name).is_file() for name in ("resolved_config.yaml", ".hydra/config.yaml"))
    try:
        run_id, _ = log_run_dir(
            run_dir, target, parent_run_id=parent, sweep_id=sweep_id, job_num=job_num,
            error_text=error_text, config=None if has_config_file else plain_config(composed_cfg),
            overrides=_task_overrides(composed_cfg),
        )
        return run_id
    except TrackingUnavailable as exc:
        warn_unavailable(target, str(exc), sweep_dir or run_dir)
    except Exception as exc:  # noqa: BLE001 - tracking must never break the run
        warn_logging_failed(run_dir, exc)
    return None


def write_error(run_dir: str | os.PathLike[str], text: str) -> None:
    from lem.files import write_text_atomic
    from lem.tracking.mlflow_sink import ERROR_FILE

    path = Path(run_dir)
    if path.is_dir():
        try:
            write_text_atomic(path / ERROR_FILE, text)  # whole or not at all: a full disk leaves no empty error.txt
        except OSError:
            pass


def log_finished_job(lem_cfg: Any, composed_cfg: Any, run_dir: str | os.PathLike[str], *, error_text: str | None = None) -> str | None:
    """Log a job's run folder once the job has ended: FINISHED, or FAILED with ``error_text`` (the
    traceback, also kept as ``error.txt`` in the folder). Returns the MLflow run id, or None.

    ``lem_cfg`` (the validated LemConfig) gives the tracking settings; ``composed_cfg`` (Hydra's
    DictConfig) the params. Tracking never breaks a run: a bad tracking setting or an unreachable
    store gives one warning and the local results stay complete.
    """
    if error_text is not None:
        write_error(run_dir, error_text)
    try:
        target = target_from_config(lem_cfg if lem_cfg is not None else composed_cfg)
    except ValueError as exc:
        print(f"lem: warning: {exc}; this run is not tracked", file=sys.stderr)
        target = None
    if target is None:
        current().tracking.logged_run_dirs.add(_key(run_dir))
        return None
    from lem.report.progress import status

    with status("logging to MLflow…", getattr(lem_cfg, "report", None)):  # a transient line on a terminal
        return log_job(composed_cfg, run_dir, error_text=error_text, target=target)


def announce(cfg: Any, run_id: str | None) -> None:
    """Print where the run just logged can be seen (nothing when it was not logged, or under report.format=json)."""
    if not run_id or str(getattr(getattr(cfg.report, "format", None), "value", "table")) == "json":
        return
    try:
        target = target_from_config(cfg)
    except Exception:  # noqa: BLE001 - a bad tracking setting was reported when the run was logged
        return
    if target is not None:
        print_locations(target, run_id)


def print_locations(target: Target, run_id: str | None) -> None:
    """The run's URL in the MLflow UI and the runs view's (:func:`lem.tracking.view.where_to_look`)."""
    try:
        from lem.tracking.store import connect
        from lem.tracking.view import where_to_look

        _, experiment_id = connect(target)  # the connection this process already made to log the run
        print("\n".join(where_to_look(target.uri, experiment_id, run_id)), flush=True)
    except Exception:  # noqa: BLE001 - a hint only; the run is logged
        pass
