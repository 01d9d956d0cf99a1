"""Faults a job survives: signals, hangs and full disks, each ending in one line and a folder that says what was kept.

* SIGTERM (``timeout``, SLURM, ``docker stop``) is handled like Ctrl-C: both raise :class:`Interrupted`
  (a ``KeyboardInterrupt``) in the main thread, the engine worker's process group is stopped, the
  folder keeps its raw records and an ``interrupted.txt`` note, and the command exits 128 + signal.
* A job past ``run.job_timeout_s`` is a failed job (:class:`JobTimedOut`): its worker's group is
  killed and ``error.txt`` says in which phase it hung (with the worker's stacks when it dumped them).
* An OSError such as ENOSPC while the worker writes becomes :class:`OutputWriteFailed`: one line that
  says what the folder kept.

``LEM_TEST_FAULT`` (tests only: ``hang:setup``, ``hang:generation``, ``enospc:N``) injects a fault
into the engine worker; nothing else reads it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path
from typing import Any

from lem.errors import LemError
from lem.files import write_text_atomic

TEST_FAULT_ENV = "LEM_TEST_FAULT"
INTERRUPT_FILE = "interrupted.txt"
HANG_TRACEBACK_FILE = "hang_traceback.txt"  # the worker's stacks when its job timed out
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which (a plain Ctrl-C KeyboardInterrupt counts as SIGINT)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.run_dir: Path | None = None
        self.phase: str | None = None


class JobFailed(LemError):
    """A job failed for a reason that is not the user's input: the command exits 1, not 2."""

    exit_code = 1


class JobTimedOut(JobFailed):
    pass


class OutputWriteFailed(JobFailed):
    pass


def signal_name(exc: BaseException) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (only from the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        # Further signals while lem winds down (a second Ctrl-C, docker's repeated TERM) are not
        # allowed to tear the clean-up; SIGKILL still ends everything.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        # A signal the caller chose to ignore stays ignored, as Python does for SIGINT: a shell script's
        # background job (`lem ... &`) must not die of the Ctrl-C meant for the script's foreground.
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)


def as_interrupted(exc: KeyboardInterrupt) -> Interrupted:
    if isinstance(exc, Interrupted):
        return exc
    interrupted = Interrupted(signal.SIGINT)
    interrupted.__cause__ = exc
    return interrupted


def phase_of(run_dir: Path) -> str:
    """The phase a job was in, read from its raw records (written as each phase ends)."""
    raw = run_dir / "raw" / "process-0.jsonl"
    if not raw.is_file():
        return "setup (idle baseline, engine init or model load)"
    names, ended = [], False
    try:
        with raw.open(errors="replace") as f:
            for line in f:
                if '"kind": "phase"' in line or '"kind": "end"' in line:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if record.get("kind") == "end":
                        ended = True
                    else:
                        names.append(str(record.get("name")))
    except OSError:
        return "an unknown phase"
    if ended:
        return "the summary"
    if "warmup" in names:
        return "generation"
    return "warmup"


def kept(run_dir: Path) -> str:
    """What the folder holds: ``N request records in raw/process-0.jsonl`` or ``no raw records``."""
    raw_dir = run_dir / "raw"
    files = sorted(raw_dir.glob("*.jsonl")) if raw_dir.is_dir() else []
    if not files:
        return "no raw records"
    n = 0
    for path in files:
        try:
            with path.open(errors="replace") as f:
                n += sum(1 for line in f if '"kind": "request"' in line)
        except OSError:
            pass
    return f"{n} request record(s) in {', '.join(f'raw/{p.name}' for p in files)}"


def write_interrupt_note(run_dir: Path, exc: Interrupted) -> None:
    """``interrupted.txt``: which signal, in which phase, what is kept; and ``summary.json`` of what was measured."""
    if not run_dir.is_dir():
        return
    text = (
        f"interrupted by {signal_name(exc)} during {exc.phase or phase_of(run_dir)}; kept: {kept(run_dir)}\n"
        f"recompute the summary with: lem summarize {run_dir}\n"
    )
    try:
        write_text_atomic(run_dir / INTERRUPT_FILE, text)  # whole or not at all: a full disk leaves no empty note
    except OSError:
        pass
    if (run_dir / "raw").is_dir():
        try:
            from lem.results.summarize import write_summary

            write_summary(run_dir)  # status "incomplete": the run is KILLED in MLflow, not lost
        except Exception:  # noqa: BLE001 - the raw records stay; `lem summarize` can retry
            pass


def drop_empty_file(path: Path) -> None:
    try:
        if path.is_file() and path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def disk_error_message(exc: OSError, run_dir: Path) -> str | None:
    """One line for an OSError writing the run's folder (full disk, quota, read-only); None for others."""
    if exc.errno not in DISK_ERRNOS:
        return None
    where = exc.filename or run_dir
    return (
        f"{os.strerror(exc.errno)} while writing {where}: the job stopped in {phase_of(run_dir)}; "
        f"kept: {kept(run_dir)} in {run_dir} (a torn last line is skipped by lem summarize)"
    )


# --- tests only ------------------------------------------------------------------------------------


def inject_test_fault() -> None:
    """Apply ``LEM_TEST_FAULT`` in the engine worker before its job (tests only)."""
    spec = os.environ.get(TEST_FAULT_ENV)
    if not spec:
        return
    import lem.pipeline

    kind, _, arg = spec.partition(":")
    if kind == "hang" and arg == "setup":  # stuck creating the engine (after the idle baseline)
        lem.pipeline.create_engine = lambda *args, **kwargs: _sleep_forever()  # type: ignore[assignment]
    elif kind == "hang" and arg == "generation":

        def hang(*args: Any, **kwargs: Any) -> Any:
            _sleep_forever()
            yield []

        lem.pipeline.serve_open_loop = hang  # type: ignore[assignment]
    elif kind == "enospc":
        from lem.results.writer import RawWriter

        original, budget = RawWriter.write, [int(arg or 0)]

        def write(self: Any, record: Any) -> Any:
            if budget[0] <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(getattr(self, "path", "raw")))
            budget[0] -= 1
            return original(self, record)

        RawWriter.write = write  # type: ignore[method-assign]


def _sleep_forever() -> None:
    import time

    while True:
        time.sleep(3600)
