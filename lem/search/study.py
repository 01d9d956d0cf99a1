"""The ask → measure → tell loop of an Optuna study whose every trial is one measured lem job.

Independent of Hydra: the caller passes ``launch``, which runs a batch of trials (each a
list of overrides, numbered by its Optuna trial number) and returns one :class:`TrialOutcome`
per trial. The Hydra sweeper passes Hydra's launcher; tests and benchmarks pass fakes.

Rules the loop keeps:

- ``n_trials`` is the study's total of *measured* trials: a rerun resumes and stops at
  ``n_trials`` without repeating a finished trial.
- A sampled configuration identical to one already measured is not measured again
  (``deduplicate``): the new trial reuses the earlier result, is marked
  ``lem.duplicate_of`` and does not count as measured.
- A failed trial (raised, ran out of memory, its process died, no summary) is told FAIL;
  the study stops once the failures exceed ``max_failure_rate × n_trials`` — from then on
  the study's failure rate would exceed the limit whatever the remaining trials do.
- Latency limits are Optuna constraints: a violating trial is infeasible (never best, never
  on the front), not merely a bad value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lem.errors import LemError
from lem.search.settings import (
    ATTR_CONSTRAINTS,
    ATTR_DUPLICATE_OF,
    ATTR_ENERGY_SOURCE,
    ATTR_ERROR,
    ATTR_INTERRUPTED,
    ATTR_METRICS,
    ATTR_MLFLOW_RUN_ID,
    ATTR_OVERRIDES,
    ATTR_RUN_DIR,
    ATTR_SKIPPED,
    GOODPUT_PREFIX,
    SHORT_NAMES,
    TOKENS_PER_S,
    TPOT_P99_MS,
    TTFT_P99_MS,
    StudySettings,
    TrialOutcome,
)
from lem.search.storage import _ask, _tell, open_study, set_constraints
from lem.tracking.metrics import finite_number, value_at
from lem.tracking.store import error_line

# A constraint value for a limit whose metric is missing: clearly violated, still finite for any storage.
_MISSING_METRIC_VIOLATION = 1e12
MAX_CONSECUTIVE_DUPLICATES = 100


@dataclass
class StudyResult:
    study: Any
    settings: StudySettings
    stopped: str | None = None  # why the study stopped early, one line
    measured_this_session: int = 0


# --- reading a job's results -----------------------------------------------------------------


def summary_value(summary: Mapping[str, Any], path: str) -> float | None:
    """The finite number at ``path`` (``latency.ttft_ms.p99``) of a summary; None when there is none."""
    return finite_number(value_at(summary, path))


def outcome_from_run_dir(run_dir: Path | None, paths: Sequence[str], *, error: str | None = None) -> TrialOutcome:
    """A job's outcome from its folder: error.txt means failed; else summary.json's values."""
    from lem.results.summarize import SUMMARY_FILE
    from lem.tracking.run_folder import ERROR_FILE

    outcome = TrialOutcome(run_dir=run_dir, error=error)
    if run_dir is None:
        outcome.error = outcome.error or "the job left no folder"
        return outcome
    if outcome.error is None and (run_dir / ERROR_FILE).is_file():
        outcome.error = _last_line((run_dir / ERROR_FILE).read_text(errors="replace")) or f"failed (see {run_dir / ERROR_FILE})"
    summary_file = run_dir / SUMMARY_FILE
    summary: dict[str, Any] | None = None
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text())
        except (OSError, ValueError):
            summary = None
    if summary is not None:
        outcome.metrics = {p: summary_value(summary, p) for p in paths}
        energy = summary.get("energy")
        if isinstance(energy, Mapping) and isinstance(energy.get("source"), str):
            outcome.energy_source = energy["source"]
        if outcome.error is None and summary.get("status") not in (None, "completed"):
            outcome.error = f"the run is {summary.get('status')} (a process did not finish; see {run_dir})"
    elif outcome.error is None:
        outcome.error = f"no {SUMMARY_FILE} in {run_dir} (the job died before writing it)"
    return outcome


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


# --- the loop ------------------------------------------------------------------------------------


def is_measured(t: Any) -> bool:
    """A trial that ran (or is running) a job of its own: counts toward n_trials."""
    from optuna.trial import TrialState

    if ATTR_DUPLICATE_OF in t.user_attrs or t.user_attrs.get(ATTR_INTERRUPTED) or ATTR_SKIPPED in t.user_attrs:
        return False
    return t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING, TrialState.PRUNED)


def is_feasible(t: Any) -> bool:
    constraints = getattr(t, "constraints", None)
    values = list(constraints.values()) if isinstance(constraints, Mapping) else list(t.user_attrs.get(ATTR_CONSTRAINTS, {}).values())
    return all(v <= 0.0 for v in values)


def params_key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def space_size(distributions: Mapping[str, Any]) -> int | None:
    """How many configurations a fully discrete space holds; None when continuous."""
    from lem.search.space import grid_values

    size = 1
    for d in distributions.values():
        try:
            size *= len(grid_values(d))
        except LemError:
            return None
    return size


Launch = Callable[[list[tuple[int, list[str]]]], list[TrialOutcome]]


def run_study(
    settings: StudySettings,
    distributions: Mapping[str, Any],
    fixed: Mapping[str, str],
    launch: Launch,
    *,
    sampler_cfg: Mapping[str, Any] | None = None,
    study: Any = None,
    echo: Callable[[str], None] = print,
) -> StudyResult:
    """Ask, launch, tell until the study holds ``settings.n_trials`` measured trials."""
    import optuna
    from optuna.trial import TrialState

    from lem.search.space import trial_overrides

    if study is None:
        study = open_study(settings, sampler_cfg, distributions)
    result = StudyResult(study=study, settings=settings)
    n_target = settings.n_trials
    if isinstance(study.sampler, optuna.samplers.GridSampler):
        n_target = min(n_target, space_size(distributions) or n_target)
    size = space_size(distributions)
    consecutive_duplicates = 0
    while True:
        trials = study.get_trials(deepcopy=False)
        measured = [t for t in trials if is_measured(t)]
        failed = [t for t in measured if t.state == TrialState.FAIL]
        finished_by_key = {params_key(t.params): t for t in measured if t.state in (TrialState.COMPLETE, TrialState.FAIL)}
        budget = settings.max_failure_rate * settings.n_trials
        if len(failed) > budget:
            result.stopped = (
                f"the study stops: {len(failed)} of {len(measured)} measured trials failed, more than "
                f"max_failure_rate={settings.max_failure_rate} x n_trials={settings.n_trials} allows; "
                "see the failed jobs' error.txt"
            )
            break
        remaining = n_target - len(measured)
        if remaining <= 0:
            break
        if settings.deduplicate and size is not None and len(finished_by_key) >= size:
            result.stopped = f"every one of the {size} configurations of the search space has been measured"
            break
        batch: list[Any] = []
        batch_keys: set[tuple[tuple[str, str], ...]] = set()
        while len(batch) < min(settings.n_jobs, remaining):
            trial = _ask(study, distributions)
            others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number and is_measured(t)]
            if len(others) + len(batch) >= n_target:
                # Another worker sharing this study (a cluster) took the last trials since we counted.
                trial.set_user_attr(ATTR_SKIPPED, "the study reached n_trials while this trial was being asked")
                _tell(study, trial, state=TrialState.FAIL)
                break
            key = params_key(trial.params)
            earlier = finished_by_key.get(key) if settings.deduplicate else None
            if earlier is not None:
                _tell_duplicate(study, trial, earlier)
                consecutive_duplicates += 1
                if consecutive_duplicates >= MAX_CONSECUTIVE_DUPLICATES:
                    break
                continue
            if settings.deduplicate and key in batch_keys:
                # The same configuration twice in one batch: measure it once, ask again for the other.
                trial.set_user_attr(ATTR_SKIPPED, "the same configuration is already in this batch")
                _tell(study, trial, state=TrialState.FAIL)
                continue
            consecutive_duplicates = 0
            batch_keys.add(key)
            trial.set_user_attr(ATTR_OVERRIDES, trial_overrides(trial.params, {}))
            batch.append(trial)
        if not batch:
            result.stopped = (
                f"the sampler proposed only configurations already measured {MAX_CONSECUTIVE_DUPLICATES} times "
                "in a row; the search space looks exhausted"
            )
            break
        try:
            outcomes = launch([(t.number, trial_overrides(t.params, fixed)) for t in batch])
        except KeyboardInterrupt:
            for t in batch:
                t.set_user_attr(ATTR_INTERRUPTED, True)
                _tell(study, t, state=TrialState.FAIL)
            raise
        except Exception as exc:  # noqa: BLE001 - the launcher itself failed: every trial of the batch did
            outcomes = [TrialOutcome(error=f"the launcher failed: {error_line(exc)}") for _ in batch]
        if len(outcomes) != len(batch):
            outcomes = list(outcomes) + [TrialOutcome(error="the launcher returned no result") for _ in range(len(batch) - len(outcomes))]
        for trial, outcome in zip(batch, outcomes):
            _tell_outcome(study, trial, outcome, settings)
            result.measured_this_session += 1
            echo(trial_line(study.get_trials(deepcopy=False)[trial.number], settings))
    return result


def _tell_duplicate(study: Any, trial: Any, earlier: Any) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr(ATTR_DUPLICATE_OF, earlier.number)
    for key in (ATTR_METRICS, ATTR_RUN_DIR, ATTR_CONSTRAINTS, ATTR_MLFLOW_RUN_ID, ATTR_ENERGY_SOURCE):
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    if earlier.state != TrialState.COMPLETE:
        _tell(study, trial, state=TrialState.FAIL)
        return
    set_constraints(study, trial, earlier.user_attrs.get(ATTR_CONSTRAINTS) or {})
    _tell(study, trial, values=list(earlier.values))


def _tell_outcome(study: Any, trial: Any, outcome: TrialOutcome, settings: StudySettings) -> None:
    from optuna.trial import TrialState

    metrics = {k: v for k, v in outcome.metrics.items() if v is not None}
    trial.set_user_attr(ATTR_METRICS, metrics)
    if outcome.run_dir is not None:
        trial.set_user_attr(ATTR_RUN_DIR, str(outcome.run_dir))
    if outcome.mlflow_run_id:
        trial.set_user_attr(ATTR_MLFLOW_RUN_ID, outcome.mlflow_run_id)
    if outcome.energy_source:
        trial.set_user_attr(ATTR_ENERGY_SOURCE, outcome.energy_source)
    error = outcome.error
    values: list[float] = []
    if error is None:
        for path in settings.objectives:
            value = outcome.metrics.get(path)
            if value is None and path.startswith(GOODPUT_PREFIX):
                # Not a failure: the configuration ran, but no request met slo.*, so J per good token has no value.
                trial.set_user_attr(ATTR_ERROR, f"{path} is null: no request met the latency objectives (slo.*)")
                _tell(study, trial, state=TrialState.PRUNED)
                return
            if value is None:
                hint = " (energy.enabled=false, or no sensor and no estimate)" if path.startswith("energy.") else ""
                error = f"{path} is missing from the job's summary.json{hint}"
                break
            values.append(value)
    if error is not None:
        trial.set_user_attr(ATTR_ERROR, error[:500])
        _tell(study, trial, state=TrialState.FAIL)
        return
    constraints = {}
    for path, limit in settings.limits.items():
        value = outcome.metrics.get(path)
        constraints[_constraint_name(path)] = (value - limit) if value is not None else _MISSING_METRIC_VIOLATION
    if constraints:
        trial.set_user_attr(ATTR_CONSTRAINTS, constraints)
        set_constraints(study, trial, constraints)  # every sampler's trials: optuna-dashboard greys the infeasible
    _tell(study, trial, values=values)


def _constraint_name(path: str) -> str:
    return {TTFT_P99_MS: "ttft_p99_ms", TPOT_P99_MS: "tpot_p99_ms"}.get(path, path)


def trial_line(t: Any, settings: StudySettings) -> str:
    """``lem: trial 3: J/token 0.0123, tok/s 45.6, TTFT p99 ms 120  [batching.batch_size=4 decoder=creative]``"""
    from optuna.trial import TrialState

    from lem.search.space import format_value

    params = " ".join(f"{k}={format_value(v)}" for k, v in t.params.items())
    if t.state == TrialState.FAIL:
        return f"lem: trial {t.number} failed: {t.user_attrs.get(ATTR_ERROR, 'see its job folder')}  [{params}]"
    metrics = t.user_attrs.get(ATTR_METRICS, {})
    shown = [f"{SHORT_NAMES.get(p, p)} {format_metric(metrics.get(p))}" for p in dict.fromkeys([*settings.objectives, TOKENS_PER_S, TTFT_P99_MS])]
    line = f"lem: trial {t.number}: {', '.join(shown)}  [{params}]"
    violated = [
        f"{SHORT_NAMES.get(p, p)} {format_metric(metrics.get(p))} > {format_metric(limit)}"
        for p, limit in settings.limits.items()
        if metrics.get(p) is None or metrics[p] > limit
    ]
    return line + (f"  infeasible: {'; '.join(violated)}" if violated else "")


def format_metric(value: Any) -> str:
    """A metric for a line or a table: about 4 significant digits, "—" when not measured."""
    if value is None:
        return "—"
    value = float(value)
    if 1000 <= abs(value) < 1e7:
        return f"{value:.0f}"
    if value == 0 or 0.01 <= abs(value) < 1000:
        return f"{value:.4g}"
    return f"{value:.3g}"
