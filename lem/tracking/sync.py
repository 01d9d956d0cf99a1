"""``python -m lem sync PATH...``: log result folders to MLflow after the fact, without duplicates.

For runs made while the tracking store was unreachable, with tracking disabled, or on a
machine without access to the team's server. PATH may be a run folder, a multirun sweep
folder (numbered job folders, maybe ``.lem_sweep.json``), or any folder above them
(``outputs/``, ``multirun/``). Each run is identified by its run key (a hash of its raw
records' headers), so a second sync — or a sync of runs already logged live — logs nothing
again. A sweep's parent run is found by sweep id or recreated, so its jobs stay children of
one parent, and the parent's table and plots are rebuilt when a child was added.

Where to: ``--tracking-uri`` / ``--experiment``, else ``MLFLOW_TRACKING_URI``, else what the
run itself was configured with (``tracking.tracking_uri``), else the project's ``mlruns/``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lem.redact import redact
from lem.tracking.store import (
    DEFAULT_EXPERIMENT,
    SWEEP_FILE,
    Target,
    TrackingUnavailable,
    resolve_tracking_uri,
)

EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2


@dataclass
class Sweep:
    """A multirun folder and the job folders found in it."""

    path: Path
    jobs: list[Path] = field(default_factory=list)


# --- finding result folders ------------------------------------------------------------------------


def _job_dirs(path: Path) -> list[Path]:
    from lem.tracking.run_folder import is_run_dir

    jobs = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and is_run_dir(p)]
    return sorted(jobs, key=lambda p: int(p.name))


def is_sweep_dir(path: Path) -> bool:
    """A Hydra multirun folder: ``multirun.yaml`` or ``.lem_sweep.json`` beside numbered job folders."""
    if not path.is_dir():
        return False
    if (path / "multirun.yaml").is_file() or (path / SWEEP_FILE).is_file():
        return True
    return bool(_job_dirs(path)) and not (path / "raw").is_dir()


_NOT_RESULTS = {"mlruns", "mlartifacts", "node_modules", "__pycache__", "site-packages"}


def _skipped(path: Path) -> bool:
    """Folders a walk never enters: hidden ones, and MLflow's own artifact copies of logged runs."""
    if path.name.startswith(".") or path.name in _NOT_RESULTS:
        return True
    return path.name == "artifacts" and any(path.parent.glob("*.db"))


def discover(paths: Sequence[Path]) -> tuple[list[Sweep], list[Path]]:
    """The sweeps and the stand-alone runs under ``paths``, each once, in a stable order."""
    from lem.tracking.run_folder import is_run_dir

    sweeps: dict[Path, Sweep] = {}
    runs: dict[Path, None] = {}

    def add_run(run: Path) -> None:
        parent = run.parent
        if run.name.isdigit() and is_sweep_dir(parent):  # a job folder given alone still belongs to its sweep
            sweeps.setdefault(parent, Sweep(parent)).jobs.append(run)
        else:
            runs[run] = None

    def walk(path: Path, depth: int) -> None:
        if is_sweep_dir(path):
            sweeps.setdefault(path, Sweep(path)).jobs.extend(_job_dirs(path))
        elif is_run_dir(path):
            add_run(path)
        elif depth < 6:  # outputs/DATE/TIME, multirun/DATE/TIME/N, and a little slack
            for child in sorted(p for p in path.iterdir() if p.is_dir() and not _skipped(p)):
                walk(child, depth + 1)

    for p in paths:
        walk(p.resolve(), 0)
    for sweep in sweeps.values():
        sweep.jobs = sorted(set(sweep.jobs), key=lambda j: int(j.name))
    return list(sweeps.values()), list(runs)


# --- where to log ------------------------------------------------------------------------------------


def target_for(config: dict[str, Any] | None, tracking_uri: str | None, experiment: str | None) -> Target:
    """``--tracking-uri``, then ``MLFLOW_TRACKING_URI`` as set now, then the store the run was configured
    with (often the one that was down), then the project's ``mlruns/``; the experiment likewise."""
    tracking = (config or {}).get("tracking") or {}
    uri = resolve_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "").strip() or tracking.get("tracking_uri"))
    name = experiment or tracking.get("experiment_name") or DEFAULT_EXPERIMENT
    return Target(uri, str(name))


def sweep_id_for(sweep_dir: Path, info: dict[str, Any] | None, job_keys: Sequence[str]) -> str:
    """The id the sweep was given when it ran; else one derived from its files, the same on every sync."""
    if info and info.get("sweep_id"):
        return str(info["sweep_id"])
    h = hashlib.sha256()
    multirun = sweep_dir / "multirun.yaml"
    if multirun.is_file():  # its content holds the overrides and the sweep's own path: stable when moved
        h.update(multirun.read_bytes())
    for key in job_keys:
        h.update(key.encode())
    return "sync-" + h.hexdigest()[:12]


def _multirun_config(sweep_dir: Path) -> tuple[dict[str, Any] | None, list[str]]:
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None, []
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        overrides = [str(x) for x in (OmegaConf.select(cfg, "hydra.overrides.task") or [])]
        data = OmegaConf.to_container(cfg, resolve=False)
        config = {str(k): v for k, v in data.items() if k != "hydra"} if isinstance(data, dict) else None
        return config, overrides
    except Exception:  # noqa: BLE001 - an unreadable multirun.yaml leaves the parent without params
        return None, []


# --- logging ------------------------------------------------------------------------------------------


@dataclass
class Report:
    logged: int = 0
    skipped: int = 0
    failed: int = 0
    targets: set[Target] = field(default_factory=set)

    def line(self, verb: str, path: Path, detail: str) -> None:
        print(f"{verb:<8}{path}  {detail}", flush=True)


def sync_run(path: Path, args: argparse.Namespace, report: Report, *, parent_run_id: str | None = None,
             sweep_id: str | None = None, target: Target | None = None) -> None:
    from lem.tracking.mlflow_sink import log_run_dir, run_name, run_status
    from lem.tracking.run_folder import read_run_folder

    folder = read_run_folder(path)
    target = target or target_for(folder.config, args.tracking_uri, args.experiment)
    report.targets.add(target)
    try:
        run_id, new = log_run_dir(folder, target, parent_run_id=parent_run_id, sweep_id=sweep_id, live=False, skip_if_logged=True)
    except TrackingUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - one unreadable folder must not stop the others
        report.failed += 1
        report.line("error", path, redact(f"not logged: {type(exc).__name__}: {exc}"))
        return
    name = run_name(folder.config, folder.summary, folder.job_num)
    if new:
        report.logged += 1
        report.line("logged", path, f"run {run_id} {name!r} {run_status(folder)}")
    else:
        report.skipped += 1
        report.line("skipped", path, f"already logged as run {run_id}")


def sync_sweep(sweep: Sweep, args: argparse.Namespace, report: Report) -> None:
    """Log a sweep's jobs under its parent run. A job folder that names its own parent (a job of an
    earlier session of a resumed study) goes under that one; a parent left RUNNING by a killed
    process is closed (KILLED)."""
    from lem.tracking.job import recorded_parent
    from lem.tracking.run_folder import read_run_folder, run_key
    from lem.tracking.sweep import read_sweep_file

    if not sweep.jobs:
        report.line("empty", sweep.path, "sweep folder without job results")
        return
    first = read_run_folder(sweep.jobs[0])
    config, overrides = _multirun_config(sweep.path)
    target = target_for(first.config or config, args.tracking_uri, args.experiment)
    report.targets.add(target)
    info = read_sweep_file(sweep.path)
    sweep_id = sweep_id_for(sweep.path, info, [run_key(read_run_folder(j)) for j in sweep.jobs] if not info else [])
    groups: dict[str, list[Path]] = {}
    for job in sweep.jobs:
        groups.setdefault(str(recorded_parent(job).get("sweep_id") or sweep_id), []).append(job)
    for group_id, jobs in sorted(groups.items(), key=lambda item: item[0] != sweep_id):
        _sync_group(sweep, group_id, jobs, target, config, overrides, args, report)


def _sync_group(sweep: Sweep, sweep_id: str, jobs: list[Path], target: Target, config: dict[str, Any] | None,
                overrides: list[str], args: argparse.Namespace, report: Report) -> None:
    from lem.tracking.sweep import (
        create_parent,
        finalize_parent,
        find_parent,
        owner_state,
    )

    existing = find_parent(target, sweep_id)
    created = existing is None
    if existing is None:
        parent_run_id = create_parent(target, sweep_id=sweep_id, overrides=overrides, config=config, sweep_dir=sweep.path,
                                      live=False, start_time_ms=_first_start_ms(jobs))
        report.line("created", sweep.path, f"sweep parent run {parent_run_id} (sweep {sweep_id})")
    else:
        parent_run_id = existing.info.run_id
        report.line("found", sweep.path, f"sweep parent run {parent_run_id} (sweep {sweep_id})")
    before = report.logged
    for job in jobs:
        sync_run(job, args, report, parent_run_id=parent_run_id, sweep_id=sweep_id, target=target)
    running = existing is not None and existing.info.status == "RUNNING"
    owner = owner_state(existing) if running else "unknown"
    if owner == "alive":  # the sweep still runs: it closes its parent itself
        report.line("running", sweep.path, f"sweep parent run {parent_run_id} belongs to a sweep that is still running")
        return
    # Rebuild the parent's table and plots only when it changed, or it never got them (the sweep died).
    if created or report.logged > before or running:
        rows = finalize_parent(target, parent_run_id, end_from_children=True, interrupted=owner == "gone", killed=owner == "gone")
        n_failed = sum(r["status"] == "FAILED" for r in rows)
        closed = "; its sweep was killed: closed as KILLED" if owner == "gone" else ""
        report.line("updated", sweep.path, f"sweep parent run {parent_run_id}: {len(rows)} children, {n_failed} failed{closed}")


def _first_start_ms(jobs: Sequence[Path]) -> int | None:
    """When the sweep's first job started (the parent's start time, so runs sort by when they ran)."""
    import json

    starts = []
    for job in jobs:
        try:
            started = json.loads((job / "summary.json").read_text())["run"]["started_unix_s"]
            starts.append(float(started))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return int(min(starts) * 1000) if starts else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lem sync",
        description="Log lem result folders (runs and multirun sweeps) to MLflow; runs already there are skipped.",
        epilog="Example: python -m lem sync multirun/2026-05-01/12-00-00 outputs/ --tracking-uri http://mlflow.example:5000",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run folders, sweep folders, or folders above them")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: MLFLOW_TRACKING_URI, else the run's tracking.tracking_uri, else <project>/mlruns)")
    parser.add_argument("--experiment", default=None, help="experiment name (default: the run's tracking.experiment_name, else 'lem')")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"lem.sync: error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.tracking_uri:
            resolve_tracking_uri(args.tracking_uri)  # a malformed URI is a usage error, said once
    except ValueError as exc:
        print(f"lem.sync: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    sweeps, runs = discover(args.paths)
    if not sweeps and not runs:
        print(f"lem.sync: nothing to log: no lem results (raw/, summary.json) under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return EXIT_USAGE
    report = Report()
    try:
        for sweep in sweeps:
            sync_sweep(sweep, args, report)
        for run in runs:
            sync_run(run, args, report)
    except TrackingUnavailable as exc:
        print(f"lem.sync: error: MLflow tracking store unavailable ({redact(str(exc))}); nothing more was logged", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ValueError as exc:  # a run configured with a malformed tracking URI
        print(f"lem.sync: error: {redact(str(exc))}; pass --tracking-uri", file=sys.stderr)
        return EXIT_USAGE
    where = ", ".join(sorted(f"{redact(t.uri)} (experiment {t.experiment_name!r})" for t in report.targets))
    print(f"lem.sync: logged {report.logged} run(s), skipped {report.skipped} already logged, {report.failed} error(s); store: {where}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
