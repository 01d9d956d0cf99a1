"""``python -m lem``: compose the config with Hydra, validate it, run one measured job.

Thin by design: validation lives in lem.config, the phases in lem.pipeline. User errors
(bad keys, values, files, missing packages or GPUs) end in one line on stderr and exit
code 2 before any model loads; only genuine bugs show a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXIT_USER_ERROR = 2


_FAILED_JOBS: list[str] = []  # multirun jobs of this process that failed (the sweep went on)


def _task(cfg: Any) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lem.config import to_dataclass, validate
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

    from lem.jobs import execute_job
    from lem.tracking import run_tracked

    from lem.distributed import launched_by_torchrun

    if launched_by_torchrun() and int(os.environ.get("RANK", "0")) > 0:
        lem_cfg.tracking.enabled = False  # under torchrun, rank 0 logs the run for every rank
    try:
        summary = run_tracked(lem_cfg, cfg, run_dir, lambda: execute_job(lem_cfg, cfg, run_dir))
    except LemError as error:
        if not multirun:
            print(f"lem: error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        return _job_failed(run_dir, f"{error}")
    except Exception as error:  # noqa: BLE001 - a crashed job: recorded as FAILED, the sweep goes on
        if not multirun:
            raise
        return _job_failed(run_dir, f"{type(error).__name__}: {error} (traceback in {run_dir / 'error.txt'})")
    return objective(summary)


def objective(summary: dict[str, Any]) -> float | None:
    """The value a sweeper minimises: J per output token, None when no energy was measured."""
    value = (summary.get("energy") or {}).get("j_per_output_token")
    return float(value) if isinstance(value, (int, float)) else None


def _job_failed(run_dir: Path, message: str) -> None:
    job = run_dir.name
    print(f"lem: job {job} failed: {message}", file=sys.stderr, flush=True)
    _FAILED_JOBS.append(job)
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
    from lem.errors import LemError
    from lem.hydra_errors import describe_config_exception

    message = describe_config_exception(exc, CONF_DIR, sys.argv[1:])
    return LemError(message) if message else exc  # type: ignore[return-value]


def main() -> None:
    # Let Hydra's exceptions reach us so they can be reported in one line.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    args = sys.argv[1:]
    if "--help" in args or "-h" in args:  # Hydra's own help takes seconds: list conf/ instead
        from lem.help import render_help

        try:
            print(render_help(CONF_DIR, [a for a in args if a not in ("--help", "-h") and not a.startswith("-")]))
        except Exception as exc:  # noqa: BLE001 - a bad override beside --help: the usual one line
            from lem.hydra_errors import describe_config_exception

            print(f"lem: error: {describe_config_exception(exc, CONF_DIR, args) or exc}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        return
    import hydra

    from lem.config import register_schema
    from lem.errors import LemError

    register_schema()
    entry = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)
    try:
        entry()
        from lem.search import failed_trial_jobs, stopped_on_failures

        _FAILED_JOBS.extend(j for j in failed_trial_jobs() if j not in _FAILED_JOBS)  # Optuna trials refused by validation
        if _FAILED_JOBS:
            print(f"lem: {len(_FAILED_JOBS)} job(s) of the sweep failed: {', '.join(_FAILED_JOBS)}", file=sys.stderr)
            sys.exit(1)
        if stopped_on_failures():  # an Optuna study resumed past its failure budget
            sys.exit(1)
    except LemError as exc:
        print(f"lem: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as exc:
        from lem.hydra_errors import describe_config_exception

        message = describe_config_exception(exc, CONF_DIR, sys.argv[1:])
        if message is None:
            raise
        print(f"lem: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
