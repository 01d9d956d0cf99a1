"""A server lem launched: started, waited for until it answers, and stopped — also when the run fails
or lem is killed.

The server runs in lem's process group (the engine worker's, which the launcher kills whole when a
worker dies or hangs) and gets SIGTERM from the kernel the moment the process that started it dies
(``PR_SET_PDEATHSIG``), so a killed run leaves no server behind. Its stdout and stderr go to a log
file, copied into the run folder as ``server.log``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lem.errors import LemError

STOP_GRACE_S = 20.0  # SIGTERM first; what is still running after this is killed
POLL_S = 0.25


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up here in the parent: the child between fork and exec only calls it."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _prctl()
PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class ServerProcess:
    """One launched server: ``start``, ``wait_ready``, ``stop``."""

    def __init__(self, command: Sequence[str], env: dict[str, str], label: str) -> None:
        self.command = list(command)
        self.env = env
        self.label = label
        self.log_path = Path(tempfile.mkdtemp(prefix="lem-server-")) / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None  # seconds from start until it answered

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        environment = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            log.write(f"# lem started: {' '.join(self.command)}\n".encode())
            log.flush()
            try:
                self.process = subprocess.Popen(
                    self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=environment, preexec_fn=_terminate_with_parent,  # noqa: PLW1509 - prctl only, no locks
                )
            except OSError as e:
                raise LemError(f"backend.openai.server_command: could not start {self.command[0]!r}: {e.strerror or e}") from e
        self._started = time.perf_counter()

    def wait_ready(self, answers: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``answers()`` until it is true; refuse in one line when the server exits or times out."""
        assert self.process is not None
        deadline = self._started + timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise LemError(
                    f"the {self.label} lem launched exited with code {code} before {what} answered; "
                    f"its last line: {self.last_line()!r} (its whole log: server.log in the run's folder)"
                )
            if answers():
                self.ready_s = time.perf_counter() - self._started
                return
            if time.perf_counter() > deadline:
                raise LemError(
                    f"the {self.label} lem launched did not answer {what} within backend.openai.startup_timeout_s={timeout_s:g}; "
                    f"its last line: {self.last_line()!r} (its whole log: server.log in the run's folder)"
                )
            time.sleep(POLL_S)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the server and everything it started; SIGKILL what is left after ``grace_s``. Its exit code."""
        if self.process is None:
            return None
        import psutil

        process, self.process = self.process, None
        try:
            leader = psutil.Process(process.pid)
            family = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            family = []
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        try:
            return process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None
        finally:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)  # copied into the run folder before (lem.pipeline)

    def last_line(self) -> str:
        try:
            lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""
