"""Run a prepared study through Hydra's launcher: visit by visit, paused between runs, stopped by its circuit breaker.

Each visit is one Hydra job numbered ``visit.job`` (its folder's name), launched alone — or, with
a launcher that runs jobs side by side, in runs of consecutive jobs — after the pause the study
asks for: ``study.cycle_gap_s`` before a new round of cycles, ``study.gap_s`` before any other run,
then the thermal gate when ``study.wait_for_idle`` is on. The pause is recorded in the job's
``study_visit.json`` and in ``study.json``; it ends before the job's energy meter starts.
A visit already completed (a resumed study) is kept; a failed or interrupted one is rerun in a
clean folder, its earlier attempt moved to ``.attempts/``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lem.study.order import Visit
from lem.study.prepare import PreparedStudy
from lem.study.state import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    PENDING,
    RUNNING,
    set_aside,
    write_visit_file,
)


class StudyStopped(Exception):
    """The circuit breaker: too many runs in a row failed."""


def run_study(study: PreparedStudy, launcher: Any, on_set_aside: Any = None) -> list[Any]:
    """Launch every visit not yet completed; return Hydra's job returns."""
    from lem.report.sweep_label import sweep_size
    from lem.session import current

    plan, state, settings = study.plan, study.state, study.settings
    gate = _Gate(settings, state)
    todo = [v for v in plan.visits if state.visit(v.position)["status"] != COMPLETED]
    state.data["status"], state.data["stopped"] = RUNNING, None
    state.data["sessions"].append({"started_unix_s": time.time(), "to_run": [v.job for v in todo], "resumed": study.resumed})
    state.save()
    returns: list[Any] = []
    previous: Visit | None = None
    failures_in_a_row = 0
    with sweep_size("job", max((v.job for v in plan.visits), default=-1) + 1):
        for batch in _batches(todo, study.parallel):
            pause = gate.before(batch[0], previous, first=previous is None and not study.resumed)
            overrides = []
            for v in batch:
                run_dir = state.job_dir(v)
                moved = set_aside(run_dir)  # an earlier attempt (failed, interrupted): kept aside, the rerun starts clean
                if moved is not None and on_set_aside is not None:
                    on_set_aside(run_dir, moved)
                entry = state.visit(v.position)
                entry.update(status=RUNNING, attempts=entry["attempts"] + 1, started_unix_s=time.time(), ended_unix_s=None, pause=pause)
                write_visit_file(run_dir, v, plan.point(v.point), plan, pause, len(plan.visits))
                overrides.append(_job_overrides(plan, v, settings) + ([_sweep_dir_override(state.sweep_dir)] if study.resumed else []))
            state.save()
            try:
                returns.append(launcher.launch(overrides, initial_job_idx=batch[0].job))
            except BaseException:
                _settle(state, batch)
                state.data["status"] = INTERRUPTED
                state.save()
                raise
            for outcome in _settle(state, batch):
                failures_in_a_row = 0 if outcome == COMPLETED else failures_in_a_row + 1
            previous = batch[-1]
            _pool(state)
            state.save()
            limit = settings.max_consecutive_failures
            if limit and failures_in_a_row >= limit:
                left = sum(state.visit(v.position)["status"] == PENDING for v in plan.visits)
                message = (f"the study stops: {failures_in_a_row} runs in a row failed (study.max_consecutive_failures={limit}); "
                           f"{left} run(s) not started; fix the cause (error.txt in the failed jobs) and run the same command to continue")
                state.data["status"], state.data["stopped"] = FAILED, message
                state.save()
                print(f"lem: {message}", file=sys.stderr, flush=True)
                current().failure_stops.append(message)
                return returns
    counts = state.counts()
    state.data["status"] = COMPLETED if counts.get(COMPLETED, 0) == len(plan.visits) else FAILED
    state.save()
    return returns


def _job_overrides(plan: Any, visit: Visit, settings: Any) -> list[str]:
    overrides = plan.visit_overrides(visit)
    if visit.cycle is None and settings.cycle_gap_s > 0 and plan.point(visit.point).cycles > 1:
        overrides.append(f"run.cycle_cooldown_s={settings.cycle_gap_s:g}")  # grouped: the pause between a job's own cycles
    return overrides


def _sweep_dir_override(sweep_dir: Any) -> str:
    """``hydra.sweep.dir=<the study's folder>``: a continued study's jobs go into its folder, not the one this command claimed."""
    import re

    text = str(sweep_dir)
    if re.fullmatch(r"[A-Za-z0-9_./+-]+", text):
        return f"hydra.sweep.dir={text}"
    return "hydra.sweep.dir='" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _batches(visits: list[Visit], parallel: int) -> list[list[Visit]]:
    """Runs of consecutive job numbers, at most ``parallel`` long (Hydra numbers a batch's jobs consecutively)."""
    out: list[list[Visit]] = []
    for v in visits:
        if out and len(out[-1]) < max(parallel, 1) and out[-1][-1].job + 1 == v.job:
            out[-1].append(v)
        else:
            out.append([v])
    return out


def _settle(state: Any, batch: list[Visit]) -> list[str]:
    """Each launched visit's outcome, read from its folder."""
    from lem.study.state import job_outcome

    outcomes = []
    for v in batch:
        entry = state.visit(v.position)
        outcome = job_outcome(state.job_dir(v))
        entry["status"] = INTERRUPTED if outcome == PENDING and entry["status"] == RUNNING else outcome
        entry["ended_unix_s"] = time.time()
        outcomes.append(entry["status"])
    return outcomes


def _pool(state: Any) -> None:
    if any(v.get("cycle") is not None for v in state.data["visits"]):
        from lem.study.pool import pooled_configs

        state.data["configs"] = pooled_configs(state)


class _Gate:
    """The pause before a visit (module docstring); the thermal gate's baseline is measured once per study."""

    def __init__(self, settings: Any, state: Any) -> None:
        self.settings, self.state = settings, state
        self.sensors = None
        if settings.wait_for_idle:
            from lem.study.gate import limits, machine_sensors, measure_baseline

            self.sensors = machine_sensors()
            if state.data.get("idle_baseline") is None:
                s = settings.idle_baseline_s
                print(f"lem: study: measuring the idle baseline of {', '.join(self.sensors.devices())} for {s:g} s", file=sys.stderr, flush=True)
                state.data["idle_baseline"] = {"devices": measure_baseline(self.sensors, s), "measured_unix_s": time.time(), "duration_s": s}
            self.limits = limits(state.data["idle_baseline"]["devices"], settings.idle_power_band_pct, settings.idle_power_band_w,
                                 settings.idle_temp_band_c)

    def before(self, visit: Visit, previous: Visit | None, *, first: bool) -> dict[str, Any] | None:
        from lem.study.gate import pause, wait_for_idle

        if first:
            return None
        s = self.settings
        new_round = previous is not None and visit.round != previous.round
        gap_s = s.cycle_gap_s if new_round else s.gap_s
        record: dict[str, Any] = {"kind": "cycle_gap" if new_round else "gap", "planned_s": gap_s, "slept_s": pause(gap_s)}
        if self.sensors is not None:
            record["idle_gate"] = wait_for_idle(self.sensors, self.limits, s.idle_timeout_s)
            if not record["idle_gate"]["reached"]:
                print(f"lem: warning: devices not back to idle after {s.idle_timeout_s:g} s "
                      f"({', '.join(record['idle_gate']['above_idle'])} above the band); job {visit.job} starts anyway",
                      file=sys.stderr, flush=True)
        return record
