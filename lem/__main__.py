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
    "plan": ("lem.study.plan_cli", "the jobs a -m sweep would run (refused, duplicates, order, time) before it runs"),
    "resume": ("lem.study.resume_cli", "continue an interrupted -m study in its sweep folder"),
    "doctor": ("lem.doctor.cli", "what this machine can measure (NVML, RAPL, CodeCarbon, engines, tracking) and fixes"),
}


def _task(cfg: Any) -> float | None:
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lem.config.checks import validate
    from lem.config.schema import to_dataclass
    from lem.errors import LemError
    from lem.session import current

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    current().jobs_started += 1
    try:
        lem_cfg = to_dataclass(cfg)
        validate(lem_cfg)
    except Exception as exc:
        from lem.config.yaml_origin import with_origin

        _discard_empty_run_dir(run_dir)
        error = exc if isinstance(exc, LemError) else _as_user_error(exc)
        error = with_origin(error, dict(hydra_cfg.runtime.choices), CONF_DIR, sys.argv[1:])  # a value from a config file: where
        if not multirun:
            # Exit here: raising would make Hydra print its own multi-line report first.
            print(f"lem: error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        current().refused_jobs.append((run_dir.name, str(error)))
        if "LemStudySweeper" in str(hydra_cfg.sweeper.get("_target_", "")):
            return None  # the sweep goes on; lem names every refusal in one line when it ends (run)
        raise error from exc  # the Optuna sweeper marks the trial failed

    from lem.launch.faults import JobFailed
    from lem.launch.job import execute_job
    from lem.launch.ranks import launched_by_torchrun
    from lem.results.writer import write_resolved_config
    from lem.tracking.job import log_finished_job

    if launched_by_torchrun() and int(os.environ.get("RANK", "0")) > 0:
        lem_cfg.tracking.enabled = False  # under torchrun, rank 0 logs the run for every rank
    try:
        write_resolved_config(cfg, run_dir)  # the composed config stays here: jobs get the validated LemConfig
        summary = execute_job(lem_cfg, run_dir)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: what was measured stays, marked interrupted
        raise _interrupted(interrupt, lem_cfg, cfg, run_dir) from None
    except JobFailed as error:  # timed out, or the disk is full: one line, not a traceback of lem's waiting loop
        log_finished_job(lem_cfg, cfg, run_dir, error_text=f"{error}\n{_stacks(run_dir)}")
        if not multirun:
            print(f"lem: error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
        return _job_failed(run_dir, f"{error}")
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
    from lem.tracking.job import announce

    announce(lem_cfg, log_finished_job(lem_cfg, cfg, run_dir))  # the run's URL in the MLflow UI
    return objective(summary)


def _interrupted(interrupt: KeyboardInterrupt, lem_cfg: Any, cfg: Any, run_dir: Path) -> BaseException:
    """Note the interruption in the run's folder and log it (KILLED, not FAILED); the exception to re-raise."""
    from lem.launch.faults import as_interrupted, phase_of, write_interrupt_note
    from lem.tracking.job import log_finished_job

    exc = as_interrupted(interrupt)
    exc.run_dir, exc.phase = run_dir, phase_of(run_dir)
    write_interrupt_note(run_dir, exc)
    try:
        log_finished_job(lem_cfg, cfg, run_dir)
    except Exception:  # noqa: BLE001 - tracking must not hide the interruption; `lem sync` logs it later
        pass
    return exc


def _stacks(run_dir: Path) -> str:
    from lem.launch.faults import HANG_TRACEBACK_FILE

    try:
        text = (run_dir / HANG_TRACEBACK_FILE).read_text(errors="replace")
    except OSError:
        return ""
    return f"\nthe engine worker's stacks at the deadline:\n{text}" if text.strip() else ""


def _report_interrupt(exc: KeyboardInterrupt) -> None:
    """One line for Ctrl-C or SIGTERM, then exit 128 + the signal (130, 143)."""
    from lem.launch.faults import as_interrupted, signal_name

    interrupted = as_interrupted(exc)
    run_dir, phase = interrupted.run_dir, interrupted.phase
    if run_dir is None:
        where = "before any job started; nothing was measured"
    else:
        job = f"job {run_dir.name} ({phase})" if _in_sweep(run_dir) else phase
        where = f"during {job}; what was measured is kept in {run_dir} (see interrupted.txt)"
    print(f"lem: interrupted ({signal_name(interrupted)}) {where}", file=sys.stderr, flush=True)
    sys.exit(128 + interrupted.signum)


def _in_sweep(run_dir: Path) -> bool:
    from lem.session import current

    return current().jobs_started > 1 or run_dir.name.isdigit()


def _end_of_sweep(session: Any) -> None:
    """Exit status of a sweep whose jobs were refused (2 when none ran, 1 when some did) or failed (1)."""
    refused = {job for job, _ in session.refused_jobs}
    failed = [job for job in session.failed_jobs if job not in refused]
    if session.refused_jobs:
        print(f"lem: error: {session.refusals_line()}", file=sys.stderr)
    if failed:
        print(f"lem: {len(failed)} job(s) of the sweep failed: {', '.join(failed)}", file=sys.stderr)
    if session.refused_jobs:
        sys.exit(EXIT_USER_ERROR if len(refused) >= (session.study_points or session.jobs_started) else 1)
    if failed or session.failure_stops:  # failure_stops: an Optuna study resumed past its failure budget
        sys.exit(1)


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
    from lem.tracking.job import JOB_PARENT_FILE

    leftovers = [p for p in run_dir.iterdir() if p.name not in (".hydra", "resolved_config.yaml", JOB_PARENT_FILE) and p.suffix != ".log"]
    if not leftovers:
        from lem.launch.run_dir import discard_if_empty

        shutil.rmtree(run_dir, ignore_errors=True)
        discard_if_empty(run_dir)  # the date folder and outputs/ when this run made them


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
    from lem.launch.faults import install_signal_handlers
    from lem.launch.run_dir import register_resolver
    from lem.session import current

    install_signal_handlers()  # SIGTERM (timeout, SLURM, docker stop) ends a run like Ctrl-C does
    register_schema()
    register_resolver()  # ${lem.claim:...}: each run's output folder is its own
    sys.argv = [sys.argv[0], *args]  # what Hydra parses (``run`` itself is not an override)
    entry = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)
    session = current()
    try:
        entry()
        _end_of_sweep(session)  # jobs that failed or were refused while the sweep went on, Optuna trials included
    except KeyboardInterrupt as exc:
        _report_interrupt(exc)
    except LemError as exc:
        if session.refused_jobs:  # a refused job ended Hydra's sweep: name every refusal, not only the first
            _end_of_sweep(session)
        print(f"lem: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as exc:
        from lem.config.hydra_errors import describe_config_exception

        message = describe_config_exception(exc, CONF_DIR, sys.argv[1:])
        if message is None and isinstance(exc, OSError) and exc.errno is not None:
            # Hydra writing a run folder's .hydra/ or log on a full or read-only disk
            message = f"cannot write {exc.filename or 'the run folder'}: {exc.strerror or exc}"
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
