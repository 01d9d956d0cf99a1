"""The Optuna side of a study: its storage opened (or created), its sampler built, trials asked and told.

Several workers (a cluster) may share one study: they race to create a new database's tables
(the losers retry), each trial is created RUNNING and named after its worker in one insert
(``_ask``), and a trial left RUNNING by a worker of this host that no longer exists is failed
as interrupted when the study is opened again.
"""

from __future__ import annotations

import importlib
import inspect
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from lem.errors import LemError
from lem.redact import redact
from lem.search.settings import (
    ATTR_CONSTRAINTS,
    ATTR_INTERRUPTED,
    ATTR_PARENT,
    ATTR_WORKER,
    STUDY_ATTR_IDENTITY,
    StudySettings,
    metric_names,
)
from lem.tracking.store import (
    ENV_PARENT_RUN_ID,
    ENV_SWEEP_ID,
    error_line,
    first_use_lock,
    pid_alive,
    sqlite_path,
)

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


# Optuna's system attribute for a trial's constraint values as one list (``constraints_func``'s format,
# ``optuna.study._constrained_optimization._CONSTRAINTS_KEY``): the only place optuna-dashboard (0.21)
# reads them from to grey out an infeasible trial. Optuna 5 reads it too, as constraints "0", "1", ...
CONSTRAINTS_SYSTEM_ATTR = "constraints"


def set_constraints(study: Any, trial: Any, constraints: Mapping[str, float]) -> None:
    """Record a trial's constraint values (feasible iff all <= 0) before it is told, whatever the sampler.

    Written once, as Optuna's list under the system attribute "constraints": what optuna-dashboard
    reads, what Optuna 4's constrained samplers read, and what Optuna 5 lists as ``trial.constraints``
    ("0", "1", ...). Not also by name (Optuna 5's ``set_constraint``): each limit would then count
    twice (GPSampler models every entry). The names stay in the trial's ``lem.constraints`` user attribute.
    """
    if not constraints:
        return
    values = [float(v) for v in constraints.values()]
    storage = getattr(study, "_storage", None)
    if storage is not None and hasattr(trial, "_trial_id"):
        storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_SYSTEM_ATTR, values)


# --- opening the study -------------------------------------------------------------------------


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
            f"with direction {settings.directions} ({error_line(exc)}); choose another study_name"
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
    _set_metric_names(study, settings.objectives)
    _fail_stale_trials(study)
    return study


def _set_metric_names(study: Any, objectives: list[str]) -> None:
    """Name the study's objectives (``study.set_metric_names``) so optuna-dashboard shows them by name;
    a study that already has these names is left as it is (the objectives were checked above)."""
    import warnings

    names = metric_names(objectives)
    if not hasattr(study, "set_metric_names") or getattr(study, "metric_names", None) == names:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" since Optuna 3.2: a line on every study for nothing
        study.set_metric_names(names)


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
            with first_use_lock(url):  # a new SQLite database: one process creates its tables
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:  # noqa: BLE001 - a wrong URL, a missing driver, a server that does not answer
            racing = type(exc).__name__ in ("IntegrityError", "OperationalError") and attempt < attempts - 1
            if not racing:
                raise LemError(f"hydra.sweeper.storage={redact(url)}: cannot open the Optuna storage ({error_line(exc)})") from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _ensure_sqlite_dir(url: str) -> None:
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)


def _worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _trial_attrs() -> dict[str, Any]:
    """What a new trial records from the start: this process, and the MLflow sweep parent it is logged under."""
    attrs: dict[str, Any] = {ATTR_WORKER: _worker()}
    parent = os.environ.get(ENV_PARENT_RUN_ID)
    if parent:
        attrs[ATTR_PARENT] = {"run_id": parent, "sweep_id": os.environ.get(ENV_SWEEP_ID)}
    return attrs


def _fail_stale_trials(study: Any) -> None:
    """Trials left RUNNING by a lem process of this host that no longer exists (killed): FAIL, interrupted."""
    import optuna
    from optuna.trial import TrialState

    me = _worker()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(ATTR_WORKER) or {}
        if worker.get("host") != me["host"] or not isinstance(worker.get("pid"), int):
            continue  # another machine's trial, or not lem's: leave it to its owner
        if worker["pid"] != me["pid"] and pid_alive(worker["pid"]):
            continue
        trial = optuna.trial.Trial(study, t._trial_id)
        trial.set_user_attr(ATTR_INTERRUPTED, True)
        _tell(study, trial, state=TrialState.FAIL)


# --- asking and telling ---------------------------------------------------------------------------


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

    attrs = _trial_attrs()
    storage, study_id = getattr(study, "_storage", None), getattr(study, "_study_id", None)
    local = getattr(study, "_thread_local", None)
    if storage is None or study_id is None or not hasattr(local, "cached_all_trials"):
        trial = study.ask(fixed_distributions=dict(distributions))  # an Optuna without that path
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return trial
    local.cached_all_trials = None  # what ``ask`` does: the sampler sees every trial so far
    template = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs=attrs)
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


def _tell(study: Any, trial: Any, **kwargs: Any) -> None:
    """``study.tell``, tolerating GridSampler's ``study.stop()`` at the end of its grid (meant for optimize())."""
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise
