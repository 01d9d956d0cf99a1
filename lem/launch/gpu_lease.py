"""One measured job per GPU: jobs lease whole GPUs through lock files shared by every lem on the machine.

Two jobs on one GPU corrupt each other's energy readings (the counter measures the device, not a
process). Before a job's engine starts, the launching process takes an exclusive ``flock`` on one
lock file per GPU it needs (``$LEM_GPU_LOCK_DIR``, default ``/tmp/lem-gpu-locks``, one file per GPU
UUID), waiting while all are taken, and starts the engine's processes with ``CUDA_VISIBLE_DEVICES``
set to the leased GPUs. A lock dies with its process, so a crashed or killed job never leaves a GPU
locked. This makes local parallel launchers (joblib, submitit's local executor) and several lem
commands on one machine safe: each measured job has its GPUs to itself.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lem.measure.gpu_state import DEFAULT_LOCK_DIR, lock_dir  # noqa: F401 - one folder for leases and GPU-setting markers

POLL_S = 1.0


def visible_gpu_uuids() -> list[str]:
    """UUIDs (``GPU-...``) of the CUDA devices this process may use, in CUDA order; [] without NVML.

    Asked of NVML, never of CUDA: the launching process must not create a CUDA context on a GPU
    another job is measuring.
    """
    try:
        from lem.measure.energy.nvml import load_pynvml, resolve_gpus

        nvml = load_pynvml()
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no NVML: nothing to lease
        return []
    try:
        targets = []
        while True:  # every visible CUDA index, until CUDA_VISIBLE_DEVICES runs out
            try:
                found, _ = resolve_gpus(nvml, [len(targets)])
            except Exception:  # noqa: BLE001 - past the last visible device
                break
            if not found:
                break
            targets += found
        return [t.mig_uuid or t.uuid for t in targets]
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


@dataclass
class GpuLease:
    """GPUs held by this process until ``release``; ``cuda_visible_devices`` is what the engine's processes see."""

    uuids: list[str]
    _files: list[IO[str]] = field(default_factory=list, repr=False)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.uuids)

    def release(self) -> None:
        for f in self._files:
            try:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
            except OSError:
                pass
        self._files = []


def _try_lock(path: Path) -> IO[str] | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - held open for the lease's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")  # who holds it, for the waiting message
    f.flush()
    return f


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def acquire(
    n_gpus: int,
    uuids: Sequence[str] | None = None,
    *,
    timeout_s: float | None = None,
    on_wait: Callable[[str], Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> GpuLease | None:
    """Lease ``n_gpus`` free GPUs among ``uuids`` (default: the visible ones), waiting while they are taken.

    Returns None when there is nothing to lease (no NVML); raises TimeoutError after ``timeout_s``.
    """
    pool = list(visible_gpu_uuids() if uuids is None else uuids)
    if not pool:
        return None
    if n_gpus > len(pool):
        raise ValueError(f"{n_gpus} GPUs needed, {len(pool)} visible")
    start = time.monotonic()
    said = False
    while True:
        held: list[tuple[str, IO[str]]] = []
        for uuid in pool:
            f = _try_lock(lock_dir() / f"{uuid}.lock")
            if f is not None:
                held.append((uuid, f))
                if len(held) == n_gpus:
                    return GpuLease([u for u, _ in held], [f for _, f in held])
        GpuLease([], [f for _, f in held]).release()  # not enough free: hold none while waiting (no deadlock)
        if timeout_s is not None and time.monotonic() - start >= timeout_s:
            raise TimeoutError(f"no {n_gpus} free GPU(s) among {len(pool)} within {timeout_s:g} s")
        if not said:
            busy = ", ".join(f"{u[:12]}… (pid {_holder(lock_dir() / f'{u}.lock')})" for u in pool)
            message = f"lem: waiting for {n_gpus} free GPU(s): measured jobs do not share a GPU; held: {busy}"
            (on_wait or (lambda m: print(m, file=sys.stderr, flush=True)))(message)
            said = True
        sleep(POLL_S)


def gpus_needed(cfg: Any) -> int:
    """How many GPUs a job occupies: 0 on CPU; the shards or replicas of a sharded run; else 1."""
    from lem.backends.registry import process_count
    from lem.config.rules import resolve_device
    from lem.config.types import Device, ShardingStrategy

    if resolve_device(cfg.backend.device) is not Device.cuda:
        return 0
    if cfg.sharding.strategy is ShardingStrategy.pipeline_parallel:
        return cfg.sharding.num_shards
    return max(process_count(cfg), cfg.sharding.num_shards)  # a self-parallel engine: 1 process on tp x pp GPUs


def lease_for(cfg: Any) -> GpuLease | None:
    """The GPUs for one job (None: a CPU job, leasing off, or no NVML to name the GPUs)."""
    from lem.config.rules import nvidia_gpu_present
    from lem.errors import LemError

    if not cfg.run.gpu_lease or not nvidia_gpu_present():
        return None  # no NVIDIA driver: nothing NVML could lease (and no torch import to learn it)
    need = gpus_needed(cfg)
    if need == 0:
        return None
    try:
        return acquire(need, timeout_s=cfg.run.gpu_lease_timeout_s)
    except TimeoutError as exc:
        raise LemError(f"run.gpu_lease_timeout_s={cfg.run.gpu_lease_timeout_s}: {exc}") from None


def restore_settings_left_by(pids: Iterable[int | None]) -> None:
    """After engine workers or ranks ended: put back the GPU settings (``gpu.*``) one killed mid-run could not."""
    from lem.measure.gpu_restore import restore_left_by

    for pid in pids:
        if pid is not None:
            restore_left_by(pid)  # no marker of that pid: nothing to do, NVML not even opened
