"""Before a study's first job: plan it, decide whether it continues an unfinished one, refuse what cannot run.

Runs from the ``lem_study`` Hydra callback (``lem.study.callback``), first when a ``-m`` sweep
starts — before the MLflow parent exists and before any job — and hands the prepared study to
lem's sweeper (``hydra_plugins.lem_study_sweeper``) through the session.

A study continues (``study.resume=auto``) when its sweep folder already holds a ``study.json``
(``lem resume DIR``, or a fixed ``hydra.sweep.dir``), or when the newest unfinished study under the
project's ``multirun/`` was started by the same command (the same overrides). Its plan must
resolve as it did: a point whose settings changed since (a YAML edited, a default changed)
refuses the resume in one line, rather than mixing two studies' results.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lem.errors import LemError
from lem.study.plan import Plan
from lem.study.state import COMPLETED, StudyState, read_study

RESUME_KEYS = ("study.resume",)  # not part of the command a study is recognised by


@dataclass
class PreparedStudy:
    plan: Plan
    state: StudyState
    settings: Any  # lem.config.schema.StudyConfig
    resumed: bool
    parallel: int  # jobs the launcher runs at once


def study_command(arguments: list[str]) -> list[str]:
    return [a for a in arguments if a.split("=", 1)[0].lstrip("+~") not in RESUME_KEYS]


def plan_study(config: Any, config_loader: Any) -> tuple[Plan, Any]:
    """The plan of the ``-m`` sweep ``config`` describes, and its study settings; nothing is claimed or written."""
    from omegaconf import OmegaConf

    from lem.config.checks import check_study
    from lem.config.schema import LemConfig, to_dataclass
    from lem.study.estimate import Estimator
    from lem.study.plan import make_plan

    settings = to_dataclass({"study": OmegaConf.to_container(config.study, resolve=True)}).study
    check_study(LemConfig(study=settings))
    # As typed: an interpolation (``${oc.env:...}``) stays one, so a resume compares what it resolves to now.
    arguments = [str(a) for a in OmegaConf.to_container(config.hydra.overrides.task, resolve=False) or []]
    params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
    cwd = Path(str(config.hydra.runtime.cwd))
    estimator = Estimator([cwd / "outputs", cwd / "multirun"])
    plan = make_plan(study_command(arguments), lambda o: config_loader.load_sweep_config(config, o), order=settings.order,
                     seed=settings.seed, params=params, describe_error=_describe, estimates=estimator)
    return plan, settings


def prepare(config: Any, config_loader: Any) -> PreparedStudy:
    """The plan and state of the study this ``-m`` command runs (module docstring); raises LemError to refuse."""
    from lem.config.types import StudyResume
    from lem.tracking.callback import config_sweep_dir

    plan, settings = plan_study(config, config_loader)
    sweep_dir = config_sweep_dir(config)
    assert sweep_dir is not None
    stored = read_study(sweep_dir)
    redirect = None
    if stored is None and settings.resume is StudyResume.auto:
        redirect = find_unfinished(sweep_dir, plan.command)
        stored = read_study(redirect) if redirect is not None else None
    if stored is not None and settings.resume is StudyResume.never:
        raise LemError(f"hydra.sweep.dir={sweep_dir} already holds a study (study.resume=never): pick another folder for a new study")
    if stored is not None:
        where = redirect or sweep_dir
        check_same_study(stored, plan, where)
        if redirect is not None:
            _redirect(config, sweep_dir, redirect)
        state = StudyState(where, stored)
        state.refresh()
        if stored.get("status") == COMPLETED and all(v["status"] == COMPLETED for v in stored["visits"]):
            raise LemError(f"the study in {where} is complete ({len(stored['visits'])} runs): nothing to resume; "
                           "remove study.json there or pick another hydra.sweep.dir for a new study")
    else:
        from dataclasses import asdict

        state = StudyState.new(sweep_dir, plan, _plain(asdict(settings)))
    if settings.wait_for_idle:
        from lem.study.gate import machine_sensors

        if not machine_sensors().devices():
            raise LemError("study.wait_for_idle=true: this machine has no power or temperature reading lem can watch "
                           "(no NVML GPU, RAPL unreadable, no thermal zone; see `lem doctor`): use study.gap_s for a fixed pause")
    return PreparedStudy(plan=plan, state=state, settings=settings, resumed=stored is not None, parallel=_parallel(config, plan, settings))


def _parallel(config: Any, plan: Plan, settings: Any) -> int:
    """Jobs launched together: a cluster launcher (SLURM) gets the whole study as one array, no pause between jobs."""
    from lem.launch.guard import parallel_jobs

    launcher = config.hydra.launcher
    if "SlurmLauncher" in str(launcher.get("_target_", "")):
        if settings.gap_s or settings.cycle_gap_s or settings.wait_for_idle:
            print("lem: warning: study.gap_s, study.cycle_gap_s and study.wait_for_idle pause between jobs on this machine; "
                  "with hydra/launcher=slurm the jobs run on other nodes at once and are not paused", file=sys.stderr, flush=True)
        return max(len(plan.visits), 1)
    return parallel_jobs(launcher)


def _plain(node: Any) -> Any:
    from enum import Enum

    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    return node.value if isinstance(node, Enum) else node


def _describe(exc: BaseException, overrides: list[str]) -> str:
    """The one line ``python -m lem`` prints for this point's refusal."""
    from lem.config.compose import CONF_DIR
    from lem.config.hydra_errors import describe_config_exception

    if isinstance(exc, LemError):
        from lem.config.yaml_origin import with_origin

        return str(with_origin(exc, {}, CONF_DIR, overrides))
    return describe_config_exception(exc, CONF_DIR, overrides) or f"{type(exc).__name__}: {exc}"


def find_unfinished(sweep_dir: Path, command: list[str]) -> Path | None:
    """The newest unfinished study of ``command`` beside the folder claimed for this sweep (multirun/<date>/<time>)."""
    from lem.launch.run_dir import claimed_by_this_process

    if not claimed_by_this_process(sweep_dir):
        return None  # a folder the user named: only a study already in it continues
    return unfinished_under(sweep_dir.parent.parent, command, exclude=sweep_dir)


def unfinished_under(root: Path, command: list[str] | None, exclude: Path | None = None) -> Path | None:
    """The newest study under ``root/<date>/<time>/`` with a visit not completed (of ``command``, unless None)."""
    found = []
    for path in root.glob("*/*/study.json"):
        data = read_study(path.parent)
        if data is None or path.parent == exclude or (command is not None and data.get("command") != command):
            continue
        if any(v.get("status") != COMPLETED for v in data.get("visits") or []):
            found.append((data.get("updated_unix_s") or 0.0, path.parent))
    return max(found)[1] if found else None


def check_same_study(stored: dict[str, Any], plan: Plan, where: Path) -> None:
    """Refuse to continue a study whose points resolve differently now (one line naming the first change)."""
    from lem.study.identity import differences

    why = None
    old_points = stored.get("points") or []
    if stored.get("command") != plan.command:
        why = f"it was started by `{' '.join(stored.get('command') or [])}`"
    elif (stored.get("order"), stored.get("seed")) != (plan.order.value, plan.seed):
        why = f"it runs in study.order={stored.get('order')} with study.seed={stored.get('seed')}"
    elif len(old_points) != len(plan.points):
        why = f"it had {len(old_points)} configurations, the command now makes {len(plan.points)}"
    else:
        for old, new in zip(old_points, plan.points):
            if (old.get("status"), old.get("key")) != (new.status, new.key):
                changed = differences(old.get("settings") or {}, new.settings or {})[:2]
                detail = "; ".join(changed) or f"{old.get('status')} → {new.status}"
                why = f"job {new.index} ({' '.join(new.overrides)}) now resolves differently: {detail}"
                break
    if why:
        raise LemError(f"cannot resume the study in {where}: {why}; restore the settings, or start a new study with study.resume=never")


def _redirect(config: Any, claimed: Path, target: Path) -> None:
    """Point this sweep (its config and lem's folder claim) at the study being continued; drop the folder just claimed."""
    from omegaconf import open_dict, read_write

    from lem.launch.run_dir import _claims, discard_if_empty
    from lem.session import current

    discard_if_empty(str(claimed))
    for key, value in list(_claims(current()).items()):
        if os.path.abspath(value) == os.path.abspath(claimed):
            _claims(current())[key] = str(target)  # later resolutions of hydra.sweep.dir (each job's) give the study's folder
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweep.dir = str(target)
    print(f"lem: continuing the unfinished study in {target} (same command; study.resume=never starts a new one)", file=sys.stderr, flush=True)
