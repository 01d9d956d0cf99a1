"""Refuse a local parallel sweep that would put two measured jobs on one GPU; warn about shared CPUs.

A Hydra callback (``hydra.callbacks.lem_launch_guard``, listed before the MLflow one) that looks
at the launcher before any job starts. SLURM (submitit_slurm) gives each job its own GPUs, and
jobs one after another (the basic launcher) never overlap. joblib and submitit's local executor
run jobs side by side on this machine: on GPUs that is only sound when every job leases its own
GPUs (``run.gpu_lease=true`` with the default engine workers), and it is refused otherwise; on a
CPU the jobs share the cores and the host's energy meter, which lem says loudly.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from hydra.experimental.callback import Callback

from lem.errors import LemError


def parallel_jobs(launcher: Any) -> int:
    """How many jobs the launcher runs at once on this machine (1: one after another, or on other machines)."""
    target = str(_get(launcher, "_target_") or "")
    if "JoblibLauncher" in target:
        n = _get(launcher, "n_jobs")
        if n is None:
            return 1
        n = int(n)
        return (os.cpu_count() or 1) + 1 + n if n < 0 else n  # joblib: -1 = all cores, -2 = all but one, ...
    if "LocalLauncher" in target and "submitit" in target:
        return 2  # submitit's local executor starts every job of a batch at once
    return 1


def _values(config: Any, key: str, default: Any) -> set[str]:
    """Every value ``key`` takes in the sweep (a swept override lists several)."""
    node: Any = config
    for part in key.split("."):
        node = _get(node, part)
    values = {str(getattr(node, "value", node) if node is not None else default)}
    for override in list(_get(_get(_get(config, "hydra"), "overrides"), "task") or []):
        k, _, v = str(override).lstrip("+~").partition("=")
        if k == key:
            values = {x.strip() for x in v.removeprefix("choice(").removesuffix(")").split(",")}
    return {v.lower() for v in values}


def _get(node: Any, key: str) -> Any:
    if node is None:
        return None
    try:
        return node.get(key) if hasattr(node, "get") else getattr(node, key, None)
    except Exception:  # noqa: BLE001 - a missing or unresolvable node
        return None


def check(config: Any, gpus_visible: int | None = None) -> str | None:
    """Raise LemError when parallel jobs would share a GPU; return a warning for shared CPUs, else None."""
    n = parallel_jobs(_get(config.hydra, "launcher"))
    if n <= 1:
        return None
    devices = _values(config, "backend.device", "auto")
    if gpus_visible is None:
        from lem.launch.gpu_lease import visible_gpu_uuids

        gpus_visible = len(visible_gpu_uuids())
    on_gpu = "cuda" in devices or ("auto" in devices and gpus_visible > 0)
    if on_gpu:
        leased = _values(config, "run.gpu_lease", "true") == {"true"}
        in_workers = _values(config, "run.isolation", "worker") == {"worker"}
        if not (leased and in_workers):
            why = "run.gpu_lease=false" if not leased else "run.isolation=inline (leases need engine workers)"
            raise LemError(
                f"hydra.launcher runs {n} measured jobs at once on this machine with {why}: two jobs would share a GPU "
                "and corrupt each other's energy readings; keep run.gpu_lease=true and run.isolation=worker, "
                "or run the jobs one after another (drop hydra/launcher)"
            )
        return None
    return (
        f"lem: warning: {n} measured jobs at once on the CPU: they share the cores and the host's energy meter "
        "(RAPL or CodeCarbon's estimate covers the whole machine), so each job's CPU energy includes the others' "
        "work; compare throughput and latency between such jobs, not their CPU energy"
    )


def run_refusal(config: Any) -> str | None:
    """Why a single run (no ``-m``) must not start: a search without ``-m``, or an output folder it may not write."""
    choices = _get(_get(_get(config, "hydra"), "runtime"), "choices")
    search = _get(choices, "hparams_search")
    if search not in (None, "null"):
        return (
            f"hparams_search={search} is a sweep: add -m (python -m lem -m hparams_search={search} ...); "
            "without it lem would run one plain run"
        )
    return _output_refusal(config, "run")


def _output_refusal(config: Any, kind: str) -> str | None:
    from lem.launch.run_dir import check_run_dir

    key = f"hydra.{kind}.dir"
    try:
        path = str(config.hydra[kind].dir)  # resolving claims a fresh folder (lem.launch.run_dir)
    except Exception as exc:  # noqa: BLE001 - the claim itself failed: say why in one line
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        why = (cause.strerror or str(cause)) if isinstance(cause, OSError) else str(exc).splitlines()[0]
        where = f" ({cause.filename})" if isinstance(cause, OSError) and cause.filename else ""
        return f"{key}: cannot make the output folder{where}: {why}"
    return check_run_dir(path, key, may_hold_results=(kind == "sweep"))


def _refuse(message: str) -> None:
    # Hydra turns a callback's exception into a warning and goes on: exit before any job starts.
    print(f"lem: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class ParallelLaunchGuard(Callback):
    """Also refuses, before anything loads, a run or sweep whose output folder lem may not write."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        reason = run_refusal(config)
        if reason:
            from lem.launch.run_dir import discard_if_empty

            try:
                discard_if_empty(str(config.hydra.run.dir))
            except Exception:  # noqa: BLE001 - no folder to tidy
                pass
            _refuse(reason)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            warning = check(config)
        except LemError as exc:
            _refuse(str(exc))
        reason = _output_refusal(config, "sweep")
        if reason:
            _refuse(reason)
        if warning:
            print(warning, file=sys.stderr, flush=True)
