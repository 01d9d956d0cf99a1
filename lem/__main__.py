"""``lem`` / ``python -m lem``: one entry point.

``lem [OVERRIDES...]`` (or ``lem run ...``) composes the config with Hydra, validates it, runs
one measured job (``lem.launch.job``) and logs its folder (``lem.tracking.job``); ``-m`` sweeps.
``lem summarize|sync|export|ui|model ...`` dispatch to the tools that work on finished runs.

Thin by design: validation lives in lem.config, the phases in lem.pipeline. User errors
(bad keys, values, files, missing packages or GPUs) end in one line on stderr and exit
code 2 before any model loads; only genuine bugs show a traceback. What the process keeps
between the jobs of a sweep is one ``lem.session.Session``, begun here.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from lem.config.compose import CONF_DIR

EXIT_USER_ERROR = 2

# lem <subcommand>: the module whose main(argv) runs it, and what it does (for --help).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "summarize": ("lem.results.summarize", "recompute summary.json and the table from a run's raw records"),
    "sync": ("lem.tracking.sync", "log result folders to MLflow later, skipping runs already there"),
    "export": ("lem.tracking.export", "lem runs as CSV, from the MLflow store or from result folders"),
    "ui": ("lem.tracking.ui", "the MLflow UI on 127.0.0.1 over this project's runs"),
    "model": ("lem.models.cli", "prepare the embedded model's cache and print its directory"),
}


def _task(cfg: Any) -> float | None:
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lem.config.checks import validate
    from lem.config.schema import to_dataclass
    from lem.errors import LemError

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        lem_cfg = to_dataclass(cfg)
        validate(lem_cfg)
    except Exception as exc:
        _discard_empty_run_dir(run_dir)
        error = exc if isinstance(exc, LemError) else _as_user_error(exc)
        if not multirun:
            # Exit here: raising would make Hydra print its own multi-line report first.
            print(f"lem: error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        raise error from exc

    from lem.launch.job import execute_job
    from lem.launch.ranks import launched_by_torchrun
    from lem.results.writer import write_resolved_config
    from lem.tracking.job import log_finished_job

    if launched_by_torchrun() and int(os.environ.get("RANK", "0")) > 0:
        lem_cfg.tracking.enabled = False  # under torchrun, rank 0 logs the run for every rank
    try:
        write_resolved_config(cfg, run_dir)  # the composed config stays here: jobs get the validated LemConfig
        summary = execute_job(lem_cfg, run_dir)
    except LemError as error:
        log_finished_job(lem_cfg, cfg, run_dir, error_text=traceback.format_exc())
        if not multirun:
            print(f"lem: error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        return _job_failed(run_dir, f"{error}")
    except Exception as error:  # noqa: BLE001 - a crashed job: recorded as FAILED, the sweep goes on
        log_finished_job(lem_cfg, cfg, run_dir, error_text=traceback.format_exc())
        if not multirun:
            raise
        return _job_failed(run_dir, f"{type(error).__name__}: {error} (traceback in {run_dir / 'error.txt'})")
    log_finished_job(lem_cfg, cfg, run_dir)
    return objective(summary)


def objective(summary: dict[str, Any]) -> float | None:
    """The value a sweeper minimises: J per output token, None when no energy was measured."""
    value = (summary.get("energy") or {}).get("j_per_output_token")
    return float(value) if isinstance(value, (int, float)) else None


def _job_failed(run_dir: Path, message: str) -> None:
    from lem.session import current

    job = run_dir.name
    print(f"lem: job {job} failed: {message}", file=sys.stderr, flush=True)
    current().record_failed_job(job)
    return None


def _discard_empty_run_dir(run_dir: Path) -> None:
    """Remove the folder Hydra made for a job that was refused before doing anything."""
    import shutil

    if not run_dir.is_dir():
        return
    leftovers = [p for p in run_dir.iterdir() if p.name not in (".hydra", "resolved_config.yaml") and p.suffix != ".log"]
    if not leftovers:
        shutil.rmtree(run_dir, ignore_errors=True)


def _as_user_error(exc: BaseException) -> Exception:
    from lem.config.hydra_errors import describe_config_exception
    from lem.errors import LemError

    message = describe_config_exception(exc, CONF_DIR, sys.argv[1:])
    return LemError(message) if message else exc  # type: ignore[return-value]


def _help(args: list[str]) -> None:
    """``--help``: lem lists conf/ and the engine registry itself (Hydra's own help takes seconds)."""
    from lem.config.help import render_help

    try:
        text = render_help(CONF_DIR, [a for a in args if a not in ("--help", "-h") and not a.startswith("-")])
    except Exception as exc:  # noqa: BLE001 - a bad override beside --help: the usual one line
        from lem.config.hydra_errors import describe_config_exception

        print(f"lem: error: {describe_config_exception(exc, CONF_DIR, args) or exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    tools = "\n".join(f"  lem {name:<10} {what}" for name, (_, what) in SUBCOMMANDS.items())
    print(f"{text}\n\nTools for finished runs (each takes --help):\n{tools}")


def run(args: list[str]) -> None:
    """``lem run [OVERRIDES...]``: one measured run, or a sweep with ``-m``."""
    # Let Hydra's exceptions reach us so they can be reported in one line.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    if "--help" in args or "-h" in args:
        _help(args)
        return
    import hydra

    from lem.config.schema import register_schema
    from lem.errors import LemError
    from lem.session import current

    register_schema()
    sys.argv = [sys.argv[0], *args]  # what Hydra parses (``run`` itself is not an override)
    entry = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)
    session = current()
    try:
        entry()
        if session.failed_jobs:  # jobs that failed while the sweep went on, Optuna trials refused by validation included
            print(f"lem: {len(session.failed_jobs)} job(s) of the sweep failed: {', '.join(session.failed_jobs)}", file=sys.stderr)
            sys.exit(1)
        if session.failure_stops:  # an Optuna study resumed past its failure budget
            sys.exit(1)
    except LemError as exc:
        print(f"lem: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as exc:
        from lem.config.hydra_errors import describe_config_exception

        message = describe_config_exception(exc, CONF_DIR, sys.argv[1:])
        if message is None:
            raise
        print(f"lem: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def main(argv: list[str] | None = None) -> None:
    from lem.session import begin

    args = sys.argv[1:] if argv is None else list(argv)
    begin()  # this process's state between jobs: one object, owned here
    if args and args[0] in SUBCOMMANDS:
        module, _ = SUBCOMMANDS[args[0]]
        sys.exit(importlib.import_module(module).main(args[1:]))
    run(args[1:] if args and args[0] == "run" else args)


if __name__ == "__main__":
    main()
