"""Optuna studies over lem's deployment settings: the engine behind ``hydra/sweeper=lem_optuna``.

The Hydra plugin (``hydra_plugins/lem_optuna_sweeper``) stays a thin shell; the search space
(``space``), the ask/measure/tell loop (``study``, on the Optuna storage of ``storage``, with
the settings and trial attributes of ``settings``), the summary and its MLflow record
(``report``, ``plots``) live here so they can be used and tested without Hydra. This
``__init__`` stays light: Optuna, MLflow and matplotlib load only when a study runs.
"""

from __future__ import annotations

from lem.session import current

# What a study leaves for lem's entry point lives in the process's session (lem.session):
# trials whose job never reached lem's own failure handling (refused by validation) join the
# sweep's failed jobs, so the exit status counts them too; a study that stopped because too
# many trials failed makes the command end non-zero.


def record_failed_job(job: str) -> None:
    current().record_failed_job(job)


def failed_trial_jobs() -> list[str]:
    return list(current().failed_jobs)


def record_failed_stop(message: str) -> None:
    current().failure_stops.append(message)


def stopped_on_failures() -> bool:
    return bool(current().failure_stops)
