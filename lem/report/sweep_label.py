"""Where a job stands in its sweep, for the progress display: "job 2 of 6", "trial 3 of 20".

The job's number comes from Hydra (``hydra.job.num``, 0-based, also its folder's name); the
sweep's size from the launching process's environment, set by :func:`sweep_size` around the jobs a
sweeper launches: lem's study sweeper names its jobs (``lem.study.execute``), lem's Optuna sweeper
its ``n_trials`` (``lem.search.hydra_sweep``). The label is computed in the launching
process and sent with the job: an engine worker is spawned once and reused, so its own
environment is stale.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

from lem.environ import environment

ENV_SWEEP_SIZE = "LEM_SWEEP_SIZE"  # jobs in this multirun (a study) or the study's n_trials (Optuna)
ENV_SWEEP_UNIT = "LEM_SWEEP_UNIT"  # "job" or "trial"


def sweep_label() -> str | None:
    """``job i of N`` / ``trial i of N`` for the current Hydra multirun job; None outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        num = int(hc.job.num)
    except Exception:  # noqa: BLE001 - outside a Hydra job
        return None
    unit = os.environ.get(ENV_SWEEP_UNIT) or "job"
    size = os.environ.get(ENV_SWEEP_SIZE, "")
    total = int(size) if size.isdigit() and int(size) > 0 else None
    if total is None:
        return f"{unit} {num + 1}"
    # A study's trial numbers run past n_trials when trials are skipped as duplicates or fail.
    return f"{unit} {num + 1} of {total}" if num < total else f"{unit} {num + 1} (n_trials={total})"


def sweep_size(unit: str, size: int) -> AbstractContextManager[None]:
    """The environment :func:`sweep_label` reads, for the jobs launched inside the block."""
    return environment({ENV_SWEEP_SIZE: str(size), ENV_SWEEP_UNIT: unit})
