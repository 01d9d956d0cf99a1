"""How one validated job runs, and where: in an engine worker process (the default), inline in
this process (``run.isolation=inline``), or as rank processes for data- and tensor-parallel runs
(``lem.launch.ranks``). Engines that start their own GPU workers (vLLM, TensorRT-LLM) run as one
process however they are sharded (``lem.backends.registry.process_count``). The job writes its run
folder; logging it is the caller's next step.

Engine workers: each engine runs in a spawned child process, so one crash cannot spoil a sweep.
A worker keeps its loaded engine between jobs whose engine settings are identical
(``lem.launch.pool``) and is replaced when they differ. A job that fails — an exception, CUDA
out of memory, or the worker process dying — ends that worker: the job is recorded as failed
with the reason, and the next job gets a fresh one. The whole measurement (idle baseline,
engine init, model load, warmup, generation) happens inside the worker, so setup energy is
reported with the job that paid it. The worker and the inline engine pool belong to the
process's ``lem.session.Session``.
"""

from __future__ import annotations

import os
import signal
import traceback
from pathlib import Path
from typing import Any

from lem.backends.registry import process_count
from lem.config.schema import LemConfig
from lem.config.types import Isolation
from lem.errors import LemError
from lem.launch import spawn
from lem.launch.faults import JobTimedOut, OutputWriteFailed
from lem.launch.gpu_lease import lease_for, restore_settings_left_by
from lem.launch.pool import EnginePool, engine_key
from lem.session import current


def execute_job(cfg: LemConfig, run_dir: Path) -> dict[str, Any]:
    """Run one measured job into ``run_dir`` and return its summary."""
    from lem.launch import ranks
    from lem.pipeline import report_summary, run_measurement
    from lem.report.sweep_label import sweep_label

    session = current()
    if process_count(cfg) == 1:  # also tensor/pipeline parallel vLLM and TensorRT-LLM: they start their own workers
        if cfg.run.isolation is Isolation.inline:
            if session.workers is not None:
                session.workers.stop()
            summary = run_measurement(cfg, run_dir, engines=engine_pool(), label=sweep_label())
            assert summary is not None
            return summary
        engine_pool().clear()
        return workers().run(cfg, run_dir)
    if ranks.launched_by_torchrun():
        return ranks.run_rank(cfg, run_dir, summarize=True, label=sweep_label()) or {}
    from lem.models.resolve import resolve_model_path

    engine_pool().clear()  # the ranks load their own engines; free this process's before they start
    if session.workers is not None:
        session.workers.stop()
    resolve_model_path(cfg.model)  # convert/cache once here, not in every rank at the same time
    ranks.run_ranks(cfg, run_dir)
    return report_summary(cfg, run_dir)


def engine_pool() -> EnginePool:
    """This process's engine pool for inline jobs."""
    session = current()
    if session.engine_pool is None:
        session.engine_pool = EnginePool()
    return session.engine_pool


def workers() -> WorkerManager:
    """This process's engine worker manager."""
    session = current()
    if session.workers is None:
        import multiprocessing.util

        session.workers = WorkerManager()
        # Stop the (non-daemonic) worker before multiprocessing joins its children at exit, or exit hangs.
        # A finalizer with a priority runs first both at interpreter exit (atexit) and at the end of a
        # process that multiprocessing started itself (a joblib/loky worker, which never runs atexit).
        multiprocessing.util.Finalize(None, session.workers.stop, exitpriority=10)
    return session.workers


class WorkerDied(LemError):
    """The engine worker process ended in the middle of a job (crash, kill, out of memory)."""


HANG_DUMP_GRACE_S = 2.0
INTERRUPT_GRACE_S = 5.0  # docker stop waits 10 s before its SIGKILL


def job_timeout_s(cfg: LemConfig) -> float | None:
    """``run.job_timeout_s``: how long one job may take in its engine worker (None: no limit)."""
    timeout_s = cfg.run.job_timeout_s
    return float(timeout_s) if timeout_s is not None and timeout_s > 0 else None  # 0 (set in code) is no limit too


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

    def run_job(self, cfg: LemConfig, run_dir: Path, label: str | None = None) -> dict[str, Any]:
        """Send one job and wait for its summary; raise LemError/RuntimeError/WorkerDied on failure.

        A job still running ``run.job_timeout_s`` after it was sent raises JobTimedOut: its worker is stuck.
        ``label`` ("job 2 of 6") travels with the job: the worker's own environment dates from its spawn.
        """
        import time

        self.engine_key = engine_key(cfg)
        self.n_jobs += 1
        timeout_s = job_timeout_s(cfg)
        # The worker dumps its stacks at the deadline; the launcher waits a moment longer for them.
        deadline = time.monotonic() + timeout_s + HANG_DUMP_GRACE_S if timeout_s is not None else None
        try:
            self._conn.send(("job", cfg, str(run_dir), label))
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
                if kind == "job_failed":
                    raise OutputWriteFailed(payload)
                raise RuntimeError(f"engine worker failed:\n{payload}")
            if not self.process.is_alive():
                self._raise_died()
            if deadline is not None and time.monotonic() > deadline:
                self._raise_timed_out(run_dir, timeout_s)

    def _raise_timed_out(self, run_dir: Path, timeout_s: float | None) -> None:
        from lem.launch.faults import HANG_TRACEBACK_FILE, kept, phase_of

        phase = phase_of(run_dir)
        self.kill_group()  # the worker and whatever the engine started: nothing of a hung job lives on
        self.process.join(timeout=5)
        stacks = run_dir / HANG_TRACEBACK_FILE
        where = f"; the worker's stacks are in {stacks}" if stacks.is_file() and stacks.stat().st_size else ""
        raise JobTimedOut(
            f"the job timed out after {timeout_s:g} s (run.job_timeout_s) during {phase}: its engine worker "
            f"(pid {self.pid}) was stopped; kept: {kept(run_dir)}{where}"
        )

    def _raise_died(self) -> None:
        self.process.join(timeout=5)
        self.kill_group()  # what the worker started (vLLM's engine core and workers) must not outlive it
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
        self.kill_group()
        self._conn.close()

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process the worker started: it leads its own process group (``_worker_main``),
        which outlives it while a member lives, so engine processes orphaned by a killed worker are found."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):  # nothing left in the group
            pass


def _worker_main(conn: Any, parent_pid: int) -> None:
    spawn.die_with_parent(parent_pid)
    try:
        os.setpgid(0, 0)  # a process group of its own: the launcher can end everything the engine starts
    except OSError:
        pass
    from lem.launch.faults import inject_test_fault
    from lem.pipeline import run_measurement

    inject_test_fault()  # LEM_TEST_FAULT, set only by lem's tests
    pool = EnginePool()
    while True:
        try:
            kind, cfg, run_dir, label = conn.recv()
        except (EOFError, OSError):
            break
        if kind == "stop":
            pool.clear()
            break
        stacks = _dump_stacks_at_deadline(cfg, Path(run_dir))
        try:
            summary = run_measurement(cfg, Path(run_dir), engines=pool, label=label)
        except LemError as exc:
            conn.send(("user_error", str(exc)))
            continue
        except OSError as exc:
            from lem.launch.faults import disk_error_message

            message = disk_error_message(exc, Path(run_dir))
            conn.send(("job_failed", message) if message else ("error", traceback.format_exc()))
            continue
        except BaseException:  # noqa: BLE001 - reported to the launcher, which ends this worker
            conn.send(("error", traceback.format_exc()))
            continue
        finally:
            _cancel_stack_dump(stacks)
        conn.send(("ok", summary))


def _dump_stacks_at_deadline(cfg: LemConfig, run_dir: Path) -> Any:
    """With ``run.job_timeout_s``, have the worker write its threads' stacks to the run folder at the
    deadline (Python's faulthandler, which works while the main thread is stuck); None without a limit."""
    import faulthandler

    from lem.launch.faults import HANG_TRACEBACK_FILE

    timeout_s = job_timeout_s(cfg)
    if timeout_s is None:
        return None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        f = (run_dir / HANG_TRACEBACK_FILE).open("w")
    except OSError:
        return None
    faulthandler.dump_traceback_later(timeout_s, exit=False, file=f)
    return f


def _cancel_stack_dump(f: Any) -> None:
    if f is None:
        return
    import faulthandler

    from lem.launch.faults import drop_empty_file

    faulthandler.cancel_dump_traceback_later()
    f.close()
    drop_empty_file(Path(f.name))


class WorkerManager:
    """The launching process's worker: reused for identical engine settings, replaced otherwise or after a failure.

    A CUDA job's worker holds a lease on its GPUs (``lem.launch.gpu_lease``) for as long as it lives.
    """

    def __init__(self) -> None:
        self.worker: EngineWorker | None = None
        self.lease: Any = None
        self.n_started = 0

    def run(self, cfg: LemConfig, run_dir: Path) -> dict[str, Any]:
        key = engine_key(cfg)
        w = self.worker
        if w is not None and (not w.alive() or not cfg.run.reuse_engine or w.engine_key != key):
            self.stop()  # different engine settings: a fresh worker, so the old engine's memory is surely freed
        if self.worker is None:
            self.lease = lease_for(cfg)
            env = {"CUDA_VISIBLE_DEVICES": self.lease.cuda_visible_devices} if self.lease is not None else None
            self.worker = EngineWorker(env)
            self.n_started += 1
        from lem.report.sweep_label import sweep_label

        try:
            return self.worker.run_job(cfg, run_dir, sweep_label())
        except KeyboardInterrupt:
            # The worker's own process group does not get the terminal's Ctrl-C (nor a SIGTERM sent to
            # lem): pass SIGINT on, so the job and the engine's processes stop as they would in the
            # foreground and the worker closes its raw file; what does not stop soon is killed.
            self.worker.kill_group(signal.SIGINT)
            self.stop(timeout_s=INTERRUPT_GRACE_S)
            raise
        except BaseException:
            self.stop()  # a failed job may leave the engine or the device in a bad state: never reuse it
            raise

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.worker is not None:
            pid = self.worker.pid
            self.worker.close(timeout_s)
            self.worker = None
            restore_settings_left_by([pid])  # a killed worker could not restore its GPUs' power limit and clocks
        if self.lease is not None:
            self.lease.release()
            self.lease = None
