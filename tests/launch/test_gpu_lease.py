"""GPU leases: one measured job per GPU across processes on a machine (lock files; fake GPU UUIDs here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lem.config.schema import LemConfig
from lem.launch import gpu_lease

GPUS = ["GPU-aaaa", "GPU-bbbb"]


@pytest.fixture(autouse=True)
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LEM_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(gpu_lease, "POLL_S", 0.05)
    return tmp_path / "locks"


def test_two_jobs_never_get_the_same_gpu_and_a_third_waits() -> None:
    a = gpu_lease.acquire(1, GPUS)
    b = gpu_lease.acquire(1, GPUS)
    assert a is not None and b is not None and set(a.uuids) | set(b.uuids) == set(GPUS)
    assert b.cuda_visible_devices in GPUS
    waited: list[str] = []
    with pytest.raises(TimeoutError):
        gpu_lease.acquire(1, GPUS, timeout_s=0.2, on_wait=waited.append)
    assert waited and f"pid {os.getpid()}" in waited[0]  # says who holds the GPUs
    a.release()
    c = gpu_lease.acquire(1, GPUS, timeout_s=1.0)
    assert c is not None and c.uuids == a.uuids
    b.release()
    c.release()


def test_a_multi_gpu_lease_holds_nothing_while_it_waits() -> None:
    a = gpu_lease.acquire(1, GPUS)
    with pytest.raises(TimeoutError):
        gpu_lease.acquire(2, GPUS, timeout_s=0.2)
    b = gpu_lease.acquire(1, GPUS, timeout_s=0.2)  # the other GPU was not kept by the waiting 2-GPU job
    assert b is not None
    a.release()
    b.release()
    both = gpu_lease.acquire(2, GPUS, timeout_s=0.5)
    assert both is not None and both.cuda_visible_devices == "GPU-aaaa,GPU-bbbb"
    both.release()


def test_a_killed_holder_frees_its_gpu(lock_dir: Path) -> None:
    code = (
        "import sys, time; sys.path.insert(0, %r); from lem.launch import gpu_lease; "
        "lease = gpu_lease.acquire(2, %r); print('held', flush=True); time.sleep(60)"
    ) % (str(Path(__file__).resolve().parents[2]), GPUS)
    holder = subprocess.Popen([sys.executable, "-c", code], env={**os.environ}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError):
            gpu_lease.acquire(1, GPUS, timeout_s=0.2)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        lease = gpu_lease.acquire(1, GPUS, timeout_s=2.0)  # the kernel dropped the dead process's locks
        assert lease is not None
        lease.release()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_cpu_jobs_lease_nothing_and_no_nvml_means_no_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = LemConfig()
    cfg.backend.device = cfg.backend.device.cpu
    assert gpu_lease.gpus_needed(cfg) == 0 and gpu_lease.lease_for(cfg) is None
    monkeypatch.setattr(gpu_lease, "visible_gpu_uuids", lambda: [])
    assert gpu_lease.acquire(1) is None  # nothing to name the GPUs by: the job runs unleased


def test_gpus_needed_by_sharding(monkeypatch: pytest.MonkeyPatch) -> None:
    from lem.config.types import Device, ShardingStrategy

    cfg = LemConfig()
    cfg.backend.device = Device.cuda
    assert gpu_lease.gpus_needed(cfg) == 1
    cfg.sharding.strategy, cfg.sharding.num_shards = ShardingStrategy.tensor_parallel, 4
    assert gpu_lease.gpus_needed(cfg) == 4
    cfg.sharding.strategy, cfg.sharding.num_shards, cfg.sharding.num_processes = ShardingStrategy.data_parallel, 1, 3
    assert gpu_lease.gpus_needed(cfg) == 3
    cfg.sharding.strategy, cfg.sharding.num_shards, cfg.sharding.num_processes = ShardingStrategy.pipeline_parallel, 2, 1
    assert gpu_lease.gpus_needed(cfg) == 2
