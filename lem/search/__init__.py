"""Optuna studies over lem's deployment settings: the engine behind ``hydra/sweeper=lem_optuna``.

The Hydra plugin (``hydra_plugins/lem_optuna_sweeper``) stays a thin shell; the search space
(``space``), the ask/measure/tell loop (``study``), the summary and its MLflow record
(``report``, ``plots``) live here so they can be used and tested without Hydra. This
``__init__`` stays light: Optuna, MLflow and matplotlib load only when a study runs.
"""

from __future__ import annotations

# Trials whose job never reached lem's own failure handling (refused by validation): lem's
# entry point adds them to the sweep's failed jobs so the exit status counts them too.
_FAILED_TRIAL_JOBS: list[str] = []
# Set when a study stopped because too many trials failed: the command must end non-zero.
_FAILED_STOP: list[str] = []


def record_failed_job(job: str) -> None:
    if job not in _FAILED_TRIAL_JOBS:
        _FAILED_TRIAL_JOBS.append(job)


def failed_trial_jobs() -> list[str]:
    return list(_FAILED_TRIAL_JOBS)


def record_failed_stop(message: str) -> None:
    _FAILED_STOP.append(message)


def stopped_on_failures() -> bool:
    return bool(_FAILED_STOP)
