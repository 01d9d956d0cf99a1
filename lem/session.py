"""The state one lem process keeps between the jobs it runs: one object, owned by the entry point.

``python -m lem`` (``lem.__main__.main``) makes a ``Session`` and installs it with ``begin``;
everything that must remember something across the jobs of a sweep — the failed jobs for the
exit status, the loaded engine and its worker, the run folders already logged, the MLflow
connections — keeps it here, so a test (or a second run in one process) starts clean by
beginning a new session. Code used as a library without the entry point gets a session made
on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrackingState:
    """MLflow connections of this process (``lem.tracking.store``)."""

    connections: dict[Any, tuple[Any, str]] = field(default_factory=dict)  # Target -> (client, experiment id)
    unavailable: dict[str, str] = field(default_factory=dict)  # uri -> why (sticky: no retry storms in a sweep)
    warned: set[str] = field(default_factory=set)  # uris already warned about
    logged_run_dirs: set[str] = field(default_factory=set)  # resolved run dirs logged (or tried): the callback skips them


@dataclass
class Session:
    # Jobs of this process's sweep that failed while the sweep went on: the command ends non-zero.
    failed_jobs: list[str] = field(default_factory=list)
    # Set when an Optuna study stopped because too many trials failed.
    failure_stops: list[str] = field(default_factory=list)
    engine_pool: Any = None  # lem.launch.pool.EnginePool of inline jobs, made on first use
    workers: Any = None  # lem.launch.job.WorkerManager, made on first use
    tracking: TrackingState = field(default_factory=TrackingState)
    # Output folders this process made (lem.launch.run_dir): "kind:pattern" -> the folder claimed.
    claimed_dirs: dict[str, str] = field(default_factory=dict)
    # Jobs of this process's sweep that reached the task function, and those refused by validation (job, reason).
    jobs_started: int = 0
    refused_jobs: list[tuple[str, str]] = field(default_factory=list)
    # A -m study (lem.study): the plan and state its callback prepared for its sweeper, and how many points it has.
    study: Any = None
    study_points: int | None = None

    def record_failed_job(self, job: str) -> None:
        if job not in self.failed_jobs:
            self.failed_jobs.append(job)

    def refusals_line(self) -> str | None:
        """``N of M jobs refused: reason (jobs a, b); other reason (job c)``, each distinct reason once; None when none was."""
        if not self.refused_jobs:
            return None
        by_reason: dict[str, list[str]] = {}
        for job, reason in self.refused_jobs:
            by_reason.setdefault(reason, []).append(job)
        n, m = len(self.refused_jobs), self.study_points or max(self.jobs_started, len(self.refused_jobs))
        reasons = "; ".join(f"{reason} (job{'s' if len(jobs) > 1 else ''} {', '.join(jobs)})" for reason, jobs in by_reason.items())
        return f"{n} of {m} jobs refused: {reasons}"


_current: Session | None = None  # the one module global: which Session is this process's


def begin(session: Session | None = None) -> Session:
    """Make ``session`` (a new one by default) this process's session and return it."""
    global _current
    _current = session if session is not None else Session()
    return _current


def current() -> Session:
    """This process's session; one is begun on first use."""
    return _current if _current is not None else begin()
