"""The Hydra side of a study: sweeper options → StudySettings, Hydra's launcher → the study's ``launch``.

Each trial is launched as Hydra job number = Optuna trial number, so its folder is
``<hydra.sweep.dir>/<trial number>`` and a resumed study never writes into an earlier
trial's folder. Hydra's BasicLauncher runs the jobs in this process, one after another,
so consecutive trials with the same engine settings share one loaded engine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.errors import LemError
from lem.plain import plain
from lem.redact import redact
from lem.search.settings import (
    J_PER_TOKEN,
    LIMIT_KEYS,
    TOKENS_PER_S,
    StudySettings,
    TrialOutcome,
)
from lem.search.study import outcome_from_run_dir
from lem.session import current

DEFAULT_STUDY_NAME = "lem"
STORAGE_FILENAME = "optuna.db"
# Task overrides that do not change what a trial measures (a rerun may differ in them and still resume).
_NOT_WORKLOAD = ("tracking.", "hydra.", "report.")


def sweep_dir_of(config: Any) -> Path:
    path = Path(str(config.hydra.sweep.dir))
    return path if path.is_absolute() else Path(str(config.hydra.runtime.cwd)) / path


def resolve_storage(storage: str | None, sweep_dir: Path, cwd: Path) -> str:
    """null → sqlite:///<sweep dir>/optuna.db; a relative SQLite path is taken from where lem was started."""
    if not storage:
        return f"sqlite:///{sweep_dir / STORAGE_FILENAME}"
    storage = str(storage).strip()
    if storage.startswith("sqlite:///"):
        path = storage[len("sqlite:///"):]
        if path and path != ":memory:" and not os.path.isabs(path):
            return f"sqlite:///{(cwd / path).resolve()}"
    elif "://" not in storage:
        raise LemError(f"hydra.sweeper.storage={storage}: expected a database URL such as sqlite:///optuna.db or postgresql://user@host/db")
    return storage


def directions_of(direction: Any) -> list[str]:
    direction = plain(direction)
    items = direction if isinstance(direction, (list, tuple)) else [direction]
    return [str(getattr(d, "name", d)).lower() for d in items]


def settings_from(options: Mapping[str, Any], config: Any, distributions: Mapping[str, Any], fixed: Mapping[str, str], task_overrides: Sequence[str]) -> StudySettings:
    directions = directions_of(options.get("direction") or "minimize")
    objectives = plain(options.get("objectives"))
    if not objectives:
        objectives = [J_PER_TOKEN, TOKENS_PER_S][: len(directions)] if len(directions) <= 2 else []
    limits = {path: float(options[key]) for key, path in LIMIT_KEYS.items() if options.get(key) is not None}
    cwd = Path(str(config.hydra.runtime.cwd))
    return StudySettings(
        study_name=str(options.get("study_name") or DEFAULT_STUDY_NAME),
        storage=resolve_storage(options.get("storage"), sweep_dir_of(config), cwd),
        directions=directions,
        objectives=[str(o) for o in objectives],
        n_trials=int(options.get("n_trials") or 0),
        n_jobs=int(options.get("n_jobs") or 1),
        max_failure_rate=float(options.get("max_failure_rate") if options.get("max_failure_rate") is not None else 0.25),
        limits=limits,
        deduplicate=bool(options.get("deduplicate", True)),
        identity=workload_identity(task_overrides, distributions, fixed),
    )


def workload_identity(task_overrides: Sequence[str], distributions: Mapping[str, Any], fixed: Mapping[str, str]) -> list[str]:
    """The fixed overrides that define what every trial measures (model, workload...), in order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for override in OverridesParser.create().parse_overrides(list(task_overrides)):
        key = override.get_key_element()
        if override.is_sweep_override() or key in distributions or key.lstrip("+~").startswith(_NOT_WORKLOAD):
            continue
        out.append(override.input_line or f"{key}={override.get_value_element_as_str()}")
    out += [f"{k}={v}" for k, v in fixed.items() if k not in distributions and not k.startswith(_NOT_WORKLOAD) and f"{k}={v}" not in out]
    return out


def _error_of(job_return: Any) -> str | None:
    status = getattr(getattr(job_return, "status", None), "name", "")
    if status != "FAILED":
        return None
    exc = getattr(job_return, "_return_value", None)
    if isinstance(exc, LemError):
        return str(exc)
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return "the job failed"


def _output_dir(job_return: Any, fallback: Path) -> Path:
    try:
        return Path(str(job_return.hydra_cfg.hydra.runtime.output_dir))
    except Exception:  # noqa: BLE001 - a launcher that returned no Hydra config
        return fallback


def make_launch(launcher: Any, config: Any, settings: StudySettings, link: Any) -> Any:
    """``launch(batch)`` for :func:`lem.search.study.run_study` on a Hydra launcher."""
    sweep_dir = sweep_dir_of(config)
    paths = settings.recorded

    def launch(batch: list[tuple[int, list[str]]]) -> list[TrialOutcome]:
        outcomes: list[TrialOutcome] = []
        for group in _consecutive(batch):
            try:
                returns = list(launcher.launch([overrides for _, overrides in group], initial_job_idx=group[0][0]))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a launcher's worker process died
                returns = [exc] * len(group)
            for (number, overrides), ret in zip(group, returns):
                fallback = sweep_dir / str(number)
                if isinstance(ret, BaseException):
                    outcome = outcome_from_run_dir(fallback if fallback.is_dir() else None, paths, error=f"the launcher failed: {type(ret).__name__}: {ret}")
                else:
                    error = _error_of(ret)
                    run_dir = _output_dir(ret, fallback)
                    outcome = outcome_from_run_dir(run_dir, paths, error=error)
                    if error is not None:
                        current().record_failed_job(str(number))  # never reached lem's own failure handling: counted for the exit status
                job_dir = outcome.run_dir or fallback
                if outcome.error is not None and outcome.run_dir is not None and not outcome.run_dir.is_dir():
                    outcome.run_dir = None  # refused before it ran: Hydra's folder was removed
                link.link_trial(number, outcome, overrides, job_dir=job_dir)
                outcomes.append(outcome)
        return outcomes

    return launch


def _consecutive(batch: Sequence[tuple[int, list[str]]]) -> list[list[tuple[int, list[str]]]]:
    """Split into runs of consecutive trial numbers: a launcher numbers a batch's jobs from one index."""
    groups: list[list[tuple[int, list[str]]]] = []
    for item in batch:
        if groups and item[0] == groups[-1][-1][0] + 1:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def run_hydra_study(options: Mapping[str, Any], config: Any, launcher: Any, arguments: Sequence[str]) -> None:
    from lem.search.report import MlflowLink, fail_parent, format_summary
    from lem.search.space import parse_search_space
    from lem.search.storage import open_study
    from lem.search.study import run_study
    from lem.tracking.store import ENV_PARENT_RUN_ID, target_from_config

    try:
        target = target_from_config(config)
    except ValueError:
        target = None  # the callback has already said why this sweep is not tracked
    parent_run_id = os.environ.get(ENV_PARENT_RUN_ID) or None
    try:
        params = plain(options.get("params")) or {}
        space_args = [f"{k}={v}" for k, v in params.items()] + list(arguments)
        distributions, fixed = parse_search_space(space_args)
        if not distributions:
            raise LemError("hydra.sweeper.params is empty: list what to search, e.g. hydra.sweeper.params.batching.batch_size='choice(1,2,4,8)'")
        settings = settings_from(options, config, distributions, fixed, arguments)
        study = open_study(settings, plain(options.get("sampler")), distributions)
        _refuse_foreign_job_dirs(sweep_dir_of(config), len(study.trials))
    except LemError as exc:
        fail_parent(target, parent_run_id, str(exc))
        raise
    link = MlflowLink(target, parent_run_id, settings.study_name)
    _log_interrupted(study, target, sweep_dir_of(config), settings.study_name)
    print(
        f"lem: Optuna study {settings.study_name!r} in {redact(settings.storage)}: "
        f"{len(study.trials)} trial(s) so far, n_trials={settings.n_trials}",
        flush=True,
    )
    result = None
    try:
        from lem.report.sweep_label import sweep_size

        with sweep_size("trial", settings.n_trials):  # "trial i of N" in each job's progress display
            result = run_study(settings, distributions, fixed, make_launch(launcher, config, settings, link), study=study, echo=_echo)
    finally:
        stopped = result.stopped if result is not None else "interrupted"
        print(format_summary(study, settings, stopped), flush=True)
        link.log_study(study, settings, stopped, distributions)
    if result.stopped and "max_failure_rate" in result.stopped:
        current().failure_stops.append(result.stopped)  # the command ends non-zero
        print(f"lem: {result.stopped}", file=sys.stderr, flush=True)


def _log_interrupted(study: Any, target: Any, sweep_dir: Path, study_name: str) -> None:
    """Trials an earlier, killed session left behind: logged under that session's parent, which is closed."""
    from lem.search.resume import log_interrupted_trials
    from lem.tracking.store import TrackingUnavailable, error_line, warn_unavailable

    try:
        numbers = log_interrupted_trials(study, target, sweep_dir, study_name)
    except TrackingUnavailable as exc:
        warn_unavailable(target, str(exc), sweep_dir)
        return
    except Exception as exc:  # noqa: BLE001 - tracking never stops a study
        print(f"lem: warning: could not log the interrupted trials to MLflow ({redact(error_line(exc))}); the study goes on",
              file=sys.stderr, flush=True)
        return
    if numbers:
        print(f"lem: interrupted trial(s) {', '.join(map(str, numbers))} of an earlier session logged to MLflow", flush=True)


def _refuse_foreign_job_dirs(sweep_dir: Path, n_trials_in_study: int) -> None:
    """Job N is trial N: a folder numbered past the study's trials belongs to another study (its storage was removed?)."""
    if not sweep_dir.is_dir():
        return
    foreign = sorted(
        int(d.name) for d in sweep_dir.iterdir()
        if d.name.isdigit() and int(d.name) >= n_trials_in_study and ((d / "raw").is_dir() or (d / "summary.json").is_file())
    )
    if foreign:
        raise LemError(
            f"hydra.sweep.dir={sweep_dir}: job folder(s) {', '.join(map(str, foreign[:5]))} hold results the study does not know "
            "(was its optuna.db removed?); the next trials would write into them: use another hydra.sweep.dir or move them away"
        )


def _echo(line: str) -> None:
    print(line, flush=True)
