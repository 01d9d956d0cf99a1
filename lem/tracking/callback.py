"""The Hydra callback that makes a multirun one MLflow parent run with each job a child.

Registered in ``conf/config.yaml`` (``hydra.callbacks.lem_mlflow``). On sweep start it creates
the parent run and hands its id to the jobs through the environment (jobs in this process,
or launcher subprocesses that inherit it) and through ``<sweep_dir>/.lem_sweep.json`` (jobs on
other nodes sharing the filesystem). Jobs log themselves (``lem.tracking.job``); a job that
died before it could is logged here from its folder. On sweep end the parent receives the
verdict (the best job's headline metrics, ``sweep/report.html``), the children's table and plots
(:func:`lem.tracking.sweep.finalize_parent`); the terminal verdict is printed by
``lem.tracking.verdict_callback.SweepTableCallback``, which reads the jobs' MLflow run ids from the
children of this parent. Light to import: MLflow loads only when a sweep starts.
"""

from __future__ import annotations

import atexit
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from lem.environ import restore_environ, set_environ
from lem.tracking.store import (
    ENV_PARENT_RUN_ID,
    ENV_SWEEP_ID,
    TrackingUnavailable,
    target_from_config,
)


def config_sweep_dir(config: Any) -> Path | None:
    """The multirun's sweep folder, made absolute against Hydra's cwd; None when the config has none."""
    try:
        path = Path(str(config.hydra.sweep.dir))
        return path if path.is_absolute() else Path(str(config.hydra.runtime.cwd)) / path
    except Exception:  # noqa: BLE001
        return None


def install_log_redaction() -> None:
    """Every log record of this process gets credential-bearing URIs hidden (Hydra's launcher logs
    each job's overrides, a tracking URI with its password among them)."""
    import logging

    previous = logging.getLogRecordFactory()
    if getattr(previous, "lem_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: logging reports it itself
            return record
        if "://" in message or "=" in message:
            from lem.redact import redact

            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return record

    factory.lem_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _log_study_file(target: Any, parent_run_id: str, sweep_dir: Path | None) -> None:
    """The study's plan and runs (``study.json``) as the parent's ``sweep/study.json``."""
    from lem.study.state import STUDY_FILE
    from lem.tracking.store import connect

    if sweep_dir is None or not (sweep_dir / STUDY_FILE).is_file():
        return
    client, _ = connect(target)
    client.log_artifact(parent_run_id, str(sweep_dir / STUDY_FILE), "sweep")
    from lem.study.state import read_study

    configs = (read_study(sweep_dir) or {}).get("configs")
    if configs:  # spread cycles: each configuration's cycles pooled, as sweep/configs.csv
        import csv
        import tempfile

        from lem.study.report import pooled_rows

        rows = pooled_rows(configs)
        with tempfile.TemporaryDirectory(prefix="lem-study-") as tmp:
            path = Path(tmp) / "configs.csv"
            with open(path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
            client.log_artifact(parent_run_id, str(path), "sweep")


def _resumed_parent(target: Any, sweep_dir: Path | None) -> tuple[str, str] | None:
    """(parent run id, sweep id) of the study this sweep continues, when its parent is in this store; else None."""
    from lem.session import current
    from lem.tracking.sweep import read_sweep_file, reopen_parent

    study = current().study
    if sweep_dir is None or study is None or not study.resumed:
        return None
    recorded = read_sweep_file(sweep_dir) or {}
    run_id, sweep_id = recorded.get("parent_run_id"), recorded.get("sweep_id")
    if not run_id or not sweep_id or not reopen_parent(target, str(run_id)):
        return None
    return str(run_id), str(sweep_id)


class LemMlflowCallback(Callback):
    def __init__(self) -> None:
        install_log_redaction()
        self.sweep_dir: Path | None = None
        self.parent_run_id: str | None = None
        self.target: Any = None
        self.sweep_id: str | None = None
        self._env_before: dict[str, str | None] = {}
        self._finalized = False

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from lem.plain import plain_config
        from lem.tracking.store import warn_unavailable
        from lem.tracking.sweep import create_parent, write_sweep_file

        try:
            self.target = target_from_config(config)
        except ValueError as exc:
            print(f"lem: warning: {exc}; this sweep is not tracked", file=sys.stderr)
            return
        if self.target is None:
            return
        sweep_dir = self.sweep_dir = config_sweep_dir(config)
        inherited = os.environ.get(ENV_PARENT_RUN_ID)
        if inherited:  # a sweep launched inside another (e.g. an Optuna study driver): nest under it
            self.sweep_id = os.environ.get(ENV_SWEEP_ID)
            return
        self.sweep_id = uuid.uuid4().hex[:12]
        overrides = list(config.hydra.overrides.task) if config.hydra.overrides.task else []
        try:
            resumed = _resumed_parent(self.target, sweep_dir)  # a study continued: its parent run goes on
            if resumed is not None:
                self.parent_run_id, self.sweep_id = resumed
            else:
                self.parent_run_id = create_parent(
                    self.target, sweep_id=self.sweep_id, overrides=overrides, config=plain_config(config), sweep_dir=sweep_dir
                )
        except TrackingUnavailable as exc:
            warn_unavailable(self.target, str(exc), sweep_dir)
            return
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a sweep
            print(f"lem: warning: could not create the sweep's MLflow run ({exc}); jobs are logged without a parent", file=sys.stderr)
            return
        self._env_before = set_environ({ENV_PARENT_RUN_ID: self.parent_run_id, ENV_SWEEP_ID: self.sweep_id})
        if sweep_dir is not None:
            from lem.redact import redact

            write_sweep_file(sweep_dir, {"parent_run_id": self.parent_run_id, "sweep_id": self.sweep_id, "tracking_uri": redact(self.target.uri)})
        # Hydra skips on_multirun_end when a job's exception ends the sweep (or on Ctrl-C): close the parent at exit.
        atexit.register(self._finalize_at_exit)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        """Each job folder names the sweep parent it belongs to: a later sync files it there, even
        when another session of the sweep (a resumed study) has since written a new parent into
        the sweep folder."""
        from lem.tracking.job import record_parent

        try:
            record_parent(Path(str(config.hydra.runtime.output_dir)))
        except Exception:  # noqa: BLE001 - tracking never stops a job
            pass

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        """Log a job that ended without logging itself (it died in validation, or before the pipeline)."""
        from lem.tracking.job import is_handled, log_job, write_error

        try:
            run_dir = Path(str(config.hydra.runtime.output_dir))
        except Exception:  # noqa: BLE001
            return
        if is_handled(run_dir):
            return
        error = None
        status = getattr(getattr(job_return, "status", None), "name", "")
        if status != "FAILED" and not run_dir.is_dir():
            return
        if status == "FAILED":  # logged even when its folder was discarded (refused by validation)
            import traceback

            exc = getattr(job_return, "_return_value", None)
            error = "".join(traceback.format_exception(exc)) if isinstance(exc, BaseException) else f"job failed: {exc!r}"
            write_error(run_dir, error)
        log_job(config, run_dir, error_text=error)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._finalize(config_sweep_dir(config), ended=True)

    def _finalize_at_exit(self) -> None:
        self._finalize(None, ended=False)

    def _finalize(self, sweep_dir: Path | None, *, ended: bool) -> None:
        """Write the children's table and plots into the parent and end it (once)."""
        from lem.redact import redact
        from lem.session import current
        from lem.tracking.store import warn_logging_failed
        from lem.tracking.sweep import finalize_parent, set_parent_tag

        restore_environ(self._env_before)
        self._env_before = {}
        if self.parent_run_id is None or self.target is None or self._finalized:
            return
        self._finalized = True
        refusals = current().refusals_line()  # jobs refused by validation have no run: the parent says so
        try:
            if refusals:
                set_parent_tag(self.target, self.parent_run_id, "lem.refused_jobs", refusals)
            rows = finalize_parent(self.target, self.parent_run_id, interrupted=not ended)
            _log_study_file(self.target, self.parent_run_id, sweep_dir or self.sweep_dir)
        except Exception as exc:  # noqa: BLE001
            warn_logging_failed(sweep_dir or self.sweep_dir or "the sweep", exc, self.target)
            return
        failed = sum(r["status"] == "FAILED" for r in rows)
        print(
            f"\nlem: sweep logged to MLflow ({redact(self.target.uri)}, experiment {self.target.experiment_name!r}): "
            f"{len(rows)} jobs, {failed} failed{', ' + refusals.split(':')[0] if refusals else ''}; parent run {self.parent_run_id} "
            "(verdict: its description and sweep/report.html)",
            flush=True,
        )
        from lem.tracking.job import print_locations

        print_locations(self.target, self.parent_run_id)
