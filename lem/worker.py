"""Engine workers: each engine runs in a spawned child process, so one crash cannot spoil a sweep.

The launching process (Hydra's job) validates the config, hands the job to a worker, and logs
the run directory the worker filled. A worker keeps its loaded engine between jobs whose
engine settings are identical (``lem.backends.pool``) and is replaced when they differ. A job
that fails — an exception, CUDA out of memory, or the worker process dying — ends that
worker: the job is recorded as failed with the reason, and the next job gets a fresh one.
The whole measurement (idle baseline, engine init, model load, warmup, generation) happens
inside the worker, so setup energy is reported with the job that paid it.
``run.isolation=inline`` runs jobs in the launching process instead (for debugging).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from lem import spawn
from lem.config import LemConfig
from lem.errors import LemError

PARENT_CHECK_INTERVAL_S = 0.5


class WorkerDied(LemError):
    """The engine worker process ended in the middle of a job (crash, kill, out of memory)."""


class EngineWorker:
    """One spawned process serving jobs sent to it, one at a time."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # a clean interpreter: no CUDA context or engine state inherited
        self._conn, child = ctx.Pipe()
        # Not daemonic: engines such as vLLM start processes of their own, which a daemonic process may not.
        # The worker still ends with its launcher: close() at exit, and a watchdog if the launcher is killed.
        self.process = ctx.Process(target=_worker_main, args=(child, os.getpid()), name="lem-engine-worker", daemon=False)
        spawn.start(self.process, env)
        child.close()
        self.engine_key: str | None = None
        self.n_jobs = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def run_job(self, cfg: LemConfig, composed: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """Send one job and wait for its summary; raise LemError/RuntimeError/WorkerDied on failure."""
        from lem.backends.pool import engine_key

        self.engine_key = engine_key(cfg)
        self.n_jobs += 1
        try:
            self._conn.send(("job", cfg, composed, str(run_dir)))
        except (BrokenPipeError, OSError) as exc:
            raise WorkerDied(f"the engine worker (pid {self.pid}) is gone: {exc}") from None
        while True:
            if self._conn.poll(0.2):
                try:
                    kind, payload = self._conn.recv()
                except (EOFError, OSError):
                    self._raise_died()
                if kind == "ok":
                    return payload
                if kind == "user_error":
                    raise LemError(payload)
                raise RuntimeError(f"engine worker failed:\n{payload}")
            if not self.process.is_alive():
                self._raise_died()

    def _raise_died(self) -> None:
        self.process.join(timeout=5)
        code = self.process.exitcode
        how = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        hint = " (out of memory?)" if code in (-signal.SIGKILL, 137) else ""
        raise WorkerDied(f"the engine worker (pid {self.pid}) died during the job: {how}{hint}")

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask the worker to unload and exit; kill it if it does not."""
        if self.process.is_alive():
            try:
                self._conn.send(("stop", None, None, None))
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout=timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self._conn.close()


def _worker_main(conn: Any, parent_pid: int) -> None:
    _watch_parent(parent_pid)
    from lem.backends.pool import EnginePool
    from lem.pipeline import run_measurement

    pool = EnginePool()
    while True:
        try:
            kind, cfg, composed, run_dir = conn.recv()
        except (EOFError, OSError):
            break
        if kind == "stop":
            pool.clear()
            break
        try:
            summary = run_measurement(cfg, composed, Path(run_dir), engines=pool)
        except LemError as exc:
            conn.send(("user_error", str(exc)))
            continue
        except BaseException:  # noqa: BLE001 - reported to the launcher, which ends this worker
            conn.send(("error", traceback.format_exc()))
            continue
        conn.send(("ok", summary))


def _watch_parent(parent_pid: int) -> None:
    """End this worker when the launching process is gone (killed with SIGKILL, it cannot tell us).

    On Linux the kernel kills the worker the moment its parent dies (PR_SET_PDEATHSIG), so a killed
    run's worker writes nothing after it; elsewhere a watchdog thread notices within half a second.
    """
    _kill_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(PARENT_CHECK_INTERVAL_S)

    threading.Thread(target=watch, name="lem-parent-watch", daemon=True).start()


def _kill_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog thread alone
        pass


class WorkerManager:
    """The launching process's worker: reused for identical engine settings, replaced otherwise or after a failure.

    A CUDA job's worker holds a lease on its GPUs (``lem.gpu_lease``) for as long as it lives.
    """

    def __init__(self) -> None:
        self.worker: EngineWorker | None = None
        self.lease: Any = None
        self.n_started = 0

    def run(self, cfg: LemConfig, composed: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        from lem.backends.pool import engine_key

        key = engine_key(cfg)
        w = self.worker
        if w is not None and (not w.alive() or not cfg.run.reuse_engine or w.engine_key != key):
            self.stop()  # different engine settings: a fresh worker, so the old engine's memory is surely freed
        if self.worker is None:
            from lem.gpu_lease import lease_for

            self.lease = lease_for(cfg)
            env = {"CUDA_VISIBLE_DEVICES": self.lease.cuda_visible_devices} if self.lease is not None else None
            self.worker = EngineWorker(env)
            self.n_started += 1
        try:
            return self.worker.run_job(cfg, composed, run_dir)
        except BaseException:
            self.stop()  # a failed job may leave the engine or the device in a bad state: never reuse it
            raise

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self.lease is not None:
            self.lease.release()
            self.lease = None
