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

import importlib
import inspect
import json
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lem.errors import LemError

J_PER_TOKEN = "energy.j_per_output_token"
TOKENS_PER_S = "throughput.output_tokens_per_s"
TTFT_P99_MS = "latency.ttft_ms.p99"
TPOT_P99_MS = "latency.tpot_ms.p99"
# Sweeper keys for latency limits → the summary.json value each one caps.
LIMIT_KEYS = {"max_ttft_p99_ms": TTFT_P99_MS, "max_tpot_p99_ms": TPOT_P99_MS}
RECORDED_METRICS = (J_PER_TOKEN, TOKENS_PER_S, TTFT_P99_MS, TPOT_P99_MS)
SHORT_NAMES = {J_PER_TOKEN: "J/token", TOKENS_PER_S: "tok/s", TTFT_P99_MS: "TTFT p99 ms", TPOT_P99_MS: "TPOT p99 ms"}

# User attributes lem stores on each trial (read back by the report and by a resumed study).
ATTR_METRICS = "lem.metrics"
ATTR_RUN_DIR = "lem.run_dir"
ATTR_ERROR = "lem.error"
ATTR_DUPLICATE_OF = "lem.duplicate_of"
ATTR_INTERRUPTED = "lem.interrupted"
ATTR_SKIPPED = "lem.skipped"
ATTR_WORKER = "lem.worker"
ATTR_OVERRIDES = "lem.overrides"
ATTR_CONSTRAINTS = "lem.constraints"
ATTR_MLFLOW_RUN_ID = "mlflow_run_id"
STUDY_ATTR_IDENTITY = "lem.identity"

# A constraint value for a limit whose metric is missing: clearly violated, still finite for any storage.
_MISSING_METRIC_VIOLATION = 1e12
MAX_CONSECUTIVE_DUPLICATES = 100


@dataclass
class StudySettings:
    study_name: str
    storage: str
    directions: list[str]
    objectives: list[str]
    n_trials: int
    n_jobs: int = 1
    max_failure_rate: float = 0.25
    limits: dict[str, float] = field(default_factory=dict)  # summary.json path → largest allowed value
    deduplicate: bool = True
    identity: list[str] = field(default_factory=list)  # the fixed overrides that define the workload

    def __post_init__(self) -> None:
        if not self.directions or any(d not in ("minimize", "maximize") for d in self.directions):
            raise LemError(f"hydra.sweeper.direction={self.directions}: expected minimize, maximize or a list of them")
        if len(self.objectives) != len(self.directions):
            raise LemError(
                f"hydra.sweeper.objectives={self.objectives}: expected one summary.json value per direction "
                f"({len(self.directions)}: {self.directions})"
            )
        if self.n_trials < 1:
            raise LemError(f"hydra.sweeper.n_trials={self.n_trials}: expected a number >= 1")
        if self.n_jobs < 1:
            raise LemError(f"hydra.sweeper.n_jobs={self.n_jobs}: expected a number >= 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise LemError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: expected a number in [0, 1]")

    @property
    def recorded(self) -> list[str]:
        return list(dict.fromkeys([*self.objectives, *RECORDED_METRICS, *self.limits]))


@dataclass
class TrialOutcome:
    """What one trial's job left behind."""

    metrics: dict[str, float | None] = field(default_factory=dict)  # summary.json path → value
    run_dir: Path | None = None
    error: str | None = None  # one line; set when the job failed
    mlflow_run_id: str | None = None


@dataclass
class StudyResult:
    study: Any
    settings: StudySettings
    stopped: str | None = None  # why the study stopped early, one line
    measured_this_session: int = 0


# --- reading a job's results -----------------------------------------------------------------


def summary_value(summary: Mapping[str, Any], path: str) -> float | None:
    node: Any = summary
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    value = float(node)
    return value if math.isfinite(value) else None


def outcome_from_run_dir(run_dir: Path | None, paths: Sequence[str], *, error: str | None = None) -> TrialOutcome:
    """A job's outcome from its folder: error.txt means failed; else summary.json's values."""
    from lem.results.summarize import SUMMARY_FILE
    from lem.tracking.mlflow_sink import ERROR_FILE

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
        if outcome.error is None and summary.get("status") not in (None, "completed"):
            outcome.error = f"the run is {summary.get('status')} (a process did not finish; see {run_dir})"
    elif outcome.error is None:
        outcome.error = f"no {SUMMARY_FILE} in {run_dir} (the job died before writing it)"
    return outcome


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


# --- the sampler -------------------------------------------------------------------------------


def build_sampler(sampler_cfg: Mapping[str, Any] | None, distributions: Mapping[str, Any], settings: StudySettings, n_existing: int) -> Any:
    """Instantiate ``{_target_: optuna.samplers.X, ...}`` for this study.

    The seed is offset by the trials already in the study so a resumed study does not
    replay its first session's random suggestions; GridSampler gets the grid of the space;
    Optuna 4 samplers get the latency limits as ``constraints_func`` (Optuna 5 reads them
    from the trials themselves).
    """
    import optuna

    cfg = dict(sampler_cfg or {"_target_": "optuna.samplers.TPESampler"})
    target = str(cfg.pop("_target_", "optuna.samplers.TPESampler"))
    cfg.pop("_partial_", None)
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise LemError(f"hydra.sweeper.sampler._target_={target}: not an importable sampler class ({exc})") from None
    accepted = inspect.signature(cls).parameters
    cfg = {k: v for k, v in cfg.items() if v is not None}  # None: the sampler's own default
    if "n_startup_trials" not in accepted:
        cfg.pop("n_startup_trials", None)  # grid, random, NSGA-II: every trial is already "startup"
    if cfg.get("seed") is not None and n_existing:
        cfg["seed"] = int(cfg["seed"]) + n_existing
    if cls is optuna.samplers.GridSampler:
        from lem.search.space import grid_values

        cfg["search_space"] = {name: grid_values(d) for name, d in distributions.items()}
    if settings.limits and not _has_set_constraint() and "constraints_func" in accepted:
        cfg["constraints_func"] = constraints_from_user_attrs
    unknown = [k for k in cfg if k not in accepted and not any(p.kind is p.VAR_KEYWORD for p in accepted.values())]
    if unknown:
        raise LemError(f"hydra.sweeper.sampler: {target} takes no argument(s) {', '.join(unknown)}")
    try:
        return cls(**cfg)
    except ImportError as exc:
        raise LemError(f"hydra.sweeper.sampler._target_={target}: needs a package that is not installed ({exc})") from None


def constraints_from_user_attrs(trial: Any) -> list[float]:
    """Optuna 4's ``constraints_func``: the values lem stored on the trial before telling it."""
    return [float(v) for v in trial.user_attrs.get(ATTR_CONSTRAINTS, {}).values()]


def _has_set_constraint() -> bool:
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


# --- opening the study -------------------------------------------------------------------------


def redact(url: str) -> str:
    """A storage URL with its password hidden (it goes into logs and MLflow)."""
    import re

    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def open_study(settings: StudySettings, sampler_cfg: Mapping[str, Any] | None, distributions: Mapping[str, Any]) -> Any:
    """Create the study, or load it to resume; refuse one that measured a different workload."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _ensure_sqlite_dir(settings.storage)
    storage = _open_storage(settings.storage)
    n_existing = 0
    try:
        n_existing = len(optuna.load_study(study_name=settings.study_name, storage=storage).trials)
    except KeyError:
        pass
    sampler = build_sampler(sampler_cfg, distributions, settings, n_existing)
    try:
        study = optuna.create_study(
            study_name=settings.study_name, storage=storage, sampler=sampler, directions=settings.directions, load_if_exists=True
        )
    except ValueError as exc:
        raise LemError(
            f"hydra.sweeper.study_name={settings.study_name}: the study in {redact(settings.storage)} cannot be resumed "
            f"with direction {settings.directions} ({_one_line(exc)}); choose another study_name"
        ) from None
    recorded = study.user_attrs.get(STUDY_ATTR_IDENTITY)
    limits = {k: float(v) for k, v in settings.limits.items()}
    if recorded is None:
        study.set_user_attr(STUDY_ATTR_IDENTITY, list(settings.identity))
        study.set_user_attr("lem.objectives", list(settings.objectives))
        study.set_user_attr("lem.limits", limits)
    elif list(recorded) != list(settings.identity):
        raise LemError(
            f"hydra.sweeper.study_name={settings.study_name}: this study in {redact(settings.storage)} measured "
            f"the workload [{' '.join(recorded)}], not [{' '.join(settings.identity)}]; use another "
            "hydra.sweeper.study_name (or hydra.sweep.dir) for a different workload"
        )
    if list(study.user_attrs.get("lem.objectives", settings.objectives)) != list(settings.objectives):
        raise LemError(
            f"hydra.sweeper.objectives={settings.objectives}: study {settings.study_name} optimises "
            f"{study.user_attrs['lem.objectives']}; use another hydra.sweeper.study_name"
        )
    if study.user_attrs.get("lem.limits", limits) != limits:
        # Finished trials were judged feasible or not against the limits they ran under.
        raise LemError(
            f"hydra.sweeper latency limits {limits or 'none'}: study {settings.study_name} was run with "
            f"{study.user_attrs['lem.limits'] or 'none'}; use another hydra.sweeper.study_name for other limits"
        )
    _fail_stale_trials(study)
    return study


def _open_storage(url: str, attempts: int = 6) -> Any:
    """The study's storage; several workers starting together on a new database race to create its
    tables (one wins, the others see a unique-constraint error): the losers try again."""
    import optuna

    if "://" not in url:
        return url
    # SQLite shared by several processes: wait for a lock instead of failing at once.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:  # noqa: BLE001 - a wrong URL, a missing driver, a server that does not answer
            racing = type(exc).__name__ in ("IntegrityError", "OperationalError") and attempt < attempts - 1
            if not racing:
                raise LemError(f"hydra.sweeper.storage={redact(url)}: cannot open the Optuna storage ({_one_line(exc)})") from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _ensure_sqlite_dir(url: str) -> None:
    from lem.tracking.store import sqlite_path

    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)


def _worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fail_stale_trials(study: Any) -> None:
    """Trials left RUNNING by a lem process of this host that no longer exists (killed): FAIL, interrupted."""
    import optuna
    from optuna.trial import TrialState

    me = _worker()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(ATTR_WORKER) or {}
        if worker.get("host") != me["host"] or not isinstance(worker.get("pid"), int):
            continue  # another machine's trial, or not lem's: leave it to its owner
        if worker["pid"] != me["pid"] and _pid_alive(worker["pid"]):
            continue
        trial = optuna.trial.Trial(study, t._trial_id)
        trial.set_user_attr(ATTR_INTERRUPTED, True)
        _tell(study, trial, state=TrialState.FAIL)


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
            outcomes = [TrialOutcome(error=f"the launcher failed: {_one_line(exc)}") for _ in batch]
        if len(outcomes) != len(batch):
            outcomes = list(outcomes) + [TrialOutcome(error="the launcher returned no result") for _ in range(len(batch) - len(outcomes))]
        for trial, outcome in zip(batch, outcomes):
            _tell_outcome(study, trial, outcome, settings)
            result.measured_this_session += 1
            echo(trial_line(study.get_trials(deepcopy=False)[trial.number], settings))
    return result


def _ask(study: Any, distributions: Mapping[str, Any]) -> Any:
    """``study.ask`` for a trial that names this process (``ATTR_WORKER``) from the moment it exists.

    A trial that became RUNNING without that name (the process killed between ``ask`` and
    ``set_user_attr``) could never be recognised as stale, and would count as measured for ever.
    So the trial is created RUNNING with the name already in it: one insert, one transaction, as
    ``Study.ask`` itself creates a trial (a private path of Optuna's). Queuing a named WAITING trial
    for ``ask`` to pop is not safe instead: on SQLite two workers can pop the same WAITING trial
    (Optuna's pop reads, then writes, and SQLite takes no row lock), and both then measure it.
    """
    import optuna

    me = _worker()
    storage, study_id = getattr(study, "_storage", None), getattr(study, "_study_id", None)
    local = getattr(study, "_thread_local", None)
    if storage is None or study_id is None or not hasattr(local, "cached_all_trials"):
        trial = study.ask(fixed_distributions=dict(distributions))  # an Optuna without that path
        trial.set_user_attr(ATTR_WORKER, me)
        return trial
    local.cached_all_trials = None  # what ``ask`` does: the sampler sees every trial so far
    template = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs={ATTR_WORKER: me})
    trial = optuna.trial.Trial(study, storage.create_new_trial(study_id, template_trial=template))
    for name, distribution in distributions.items():
        _suggest(trial, name, distribution)
    return trial


def _suggest(trial: Any, name: str, distribution: Any) -> Any:
    """The public ``suggest_*`` call for one of the distributions ``lem.search.space`` builds."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def _tell_duplicate(study: Any, trial: Any, earlier: Any) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr(ATTR_DUPLICATE_OF, earlier.number)
    for key in (ATTR_METRICS, ATTR_RUN_DIR, ATTR_CONSTRAINTS, ATTR_MLFLOW_RUN_ID):
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    if earlier.state != TrialState.COMPLETE:
        _tell(study, trial, state=TrialState.FAIL)
        return
    if _has_set_constraint():
        for name, value in (getattr(earlier, "constraints", None) or {}).items():
            trial.set_constraint(name, value)
    _tell(study, trial, values=list(earlier.values))


def _tell_outcome(study: Any, trial: Any, outcome: TrialOutcome, settings: StudySettings) -> None:
    from optuna.trial import TrialState

    metrics = {k: v for k, v in outcome.metrics.items() if v is not None}
    trial.set_user_attr(ATTR_METRICS, metrics)
    if outcome.run_dir is not None:
        trial.set_user_attr(ATTR_RUN_DIR, str(outcome.run_dir))
    if outcome.mlflow_run_id:
        trial.set_user_attr(ATTR_MLFLOW_RUN_ID, outcome.mlflow_run_id)
    error = outcome.error
    values: list[float] = []
    if error is None:
        for path in settings.objectives:
            value = outcome.metrics.get(path)
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
        if _has_set_constraint():
            for name, value in constraints.items():
                trial.set_constraint(name, value)
    _tell(study, trial, values=values)


def _tell(study: Any, trial: Any, **kwargs: Any) -> None:
    """``study.tell``, tolerating GridSampler's ``study.stop()`` at the end of its grid (meant for optimize())."""
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


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
    shown = [f"{SHORT_NAMES.get(p, p)} {_fmt(metrics.get(p))}" for p in dict.fromkeys([*settings.objectives, TOKENS_PER_S, TTFT_P99_MS])]
    line = f"lem: trial {t.number}: {', '.join(shown)}  [{params}]"
    violated = [
        f"{SHORT_NAMES.get(p, p)} {_fmt(metrics.get(p))} > {_fmt(limit)}"
        for p, limit in settings.limits.items()
        if metrics.get(p) is None or metrics[p] > limit
    ]
    return line + (f"  infeasible: {'; '.join(violated)}" if violated else "")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    value = float(value)
    if 1000 <= abs(value) < 1e7:
        return f"{value:.0f}"
    if value == 0 or 0.01 <= abs(value) < 1000:
        return f"{value:.4g}"
    return f"{value:.3g}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}"[:300] if text else type(exc).__name__
