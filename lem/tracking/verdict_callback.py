"""The Hydra callback that ends every plain multirun with its verdict: the jobs sorted by J/token,
Pareto rows marked, the best job with its MLflow run id (:mod:`lem.report.verdict`), then the
lifecycle table (:mod:`lem.report.lifecycle`). Registered in ``conf/config.yaml``. It lives here,
not in ``lem/report``, because it reads the run ids from the sweep's MLflow parent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from lem.report.lifecycle import render_lifecycle, sweep_rows, verdict_rows


def attach_run_ids(rows: list[dict[str, Any]], config: Any, sweep_dir: Path) -> None:
    """Each row's MLflow run id, from the children of the sweep's parent run (when the sweep is tracked)."""
    import os

    from lem.tracking.store import ENV_PARENT_RUN_ID, target_from_config
    from lem.tracking.sweep import children_rows, read_sweep_file

    parent = (read_sweep_file(sweep_dir) or {}).get("parent_run_id") or os.environ.get(ENV_PARENT_RUN_ID)
    target = target_from_config(config) if parent else None
    if target is None:
        return
    by_num = {c["job_num"]: c["run_id"] for c in children_rows(target, parent) if c["job_num"] is not None}
    for row in rows:
        row["run_id"] = by_num.get(row["num"])


def _is_study(config: Any) -> bool:
    """An Optuna study prints its own verdict (with feasibility) when it ends."""
    try:
        return "optuna" in str(config.hydra.sweeper._target_).lower()
    except Exception:  # noqa: BLE001
        return False


class SweepTableCallback(Callback):
    """Prints the sweep's verdict (:mod:`lem.report.verdict`), then the lifecycle table, when its last job is done."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from lem.report.verdict import render_verdict
        from lem.tracking.callback import config_sweep_dir

        sweep_dir = config_sweep_dir(config)
        if sweep_dir is None:
            return
        try:
            verdict = [] if _is_study(config) else verdict_rows(sweep_dir)
            rows = sweep_rows(sweep_dir)
        except Exception:  # noqa: BLE001 - a report only; the jobs' own results are already written
            return
        if verdict:
            try:
                attach_run_ids(verdict, config, sweep_dir)
            except Exception:  # noqa: BLE001 - the verdict stands without run ids
                pass
            print("\n" + render_verdict(verdict), flush=True)
        if len(rows) > 1:  # one job has nothing to compare its setup against
            print("\n" + render_lifecycle(rows), flush=True)
