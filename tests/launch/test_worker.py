"""Engine workers: a job in a spawned process; a killed worker fails its job only; reuse and replacement."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from lem.config.schema import LemConfig
from lem.config.types import DType
from lem.launch.job import WorkerDied, WorkerManager
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def job_cfg(model: Path, **dataset: int) -> LemConfig:
    cfg = LemConfig()
    cfg.model.name_or_path = str(model)
    cfg.backend.pytorch.num_threads = 1
    cfg.energy.idle_baseline_s = 0.0
    cfg.tracking.enabled = False
    cfg.flops.strategy = cfg.flops.strategy.analytical
    cfg.dataset.n_prompts = dataset.get("n_prompts", 3)
    cfg.dataset.max_output_tokens = dataset.get("max_output_tokens", 4)
    return cfg


def header(run_dir: Path) -> dict:
    return json.loads((run_dir / "raw" / "process-0.jsonl").read_text().splitlines()[0])


def test_identical_engine_settings_reuse_the_worker_and_others_replace_it(tiny_model: Path, tmp_path: Path) -> None:
    manager = WorkerManager()
    try:
        first = manager.run(job_cfg(tiny_model), tmp_path / "a")
        pid = manager.worker.pid
        assert first["n_requests"] == 3 and pid != os.getpid()  # measured in another process
        assert header(tmp_path / "a")["pid"] == pid and header(tmp_path / "a")["engine_reused"] is False

        runtime_only = job_cfg(tiny_model, n_prompts=2)  # a different workload, same engine
        runtime_only.decoder.do_sample = True
        manager.run(runtime_only, tmp_path / "b")
        assert manager.worker.pid == pid and manager.n_started == 1
        b = json.loads((tmp_path / "b" / "raw" / "process-0.jsonl").read_text().splitlines()[0])
        phases = [json.loads(line)["name"] for line in (tmp_path / "b" / "raw" / "process-0.jsonl").read_text().splitlines() if '"kind": "phase"' in line]
        assert b["engine_reused"] is True and phases == ["warmup", "generation"]  # setup was paid by job a

        other_engine = job_cfg(tiny_model)
        other_engine.precision.dtype = DType.bfloat16
        manager.run(other_engine, tmp_path / "c")
        assert manager.worker.pid != pid and manager.n_started == 2
        assert header(tmp_path / "c")["engine_reused"] is False and header(tmp_path / "c")["dtype"] == "bfloat16"
    finally:
        manager.stop()


def test_a_killed_worker_fails_its_job_and_the_next_job_gets_a_fresh_one(tiny_model: Path, tmp_path: Path) -> None:
    manager = WorkerManager()
    try:
        manager.run(job_cfg(tiny_model, n_prompts=1), tmp_path / "warm")  # start a worker
        doomed_pid = manager.worker.pid
        raw = tmp_path / "slow" / "raw" / "process-0.jsonl"

        def kill_when_generating() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if raw.exists() and '"kind": "request"' in raw.read_text():
                    os.kill(doomed_pid, signal.SIGKILL)
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_when_generating)
        killer.start()
        slow = job_cfg(tiny_model, n_prompts=200, max_output_tokens=32)
        slow.batching.batch_size = 1
        slow.dataset.ignore_eos = True
        with pytest.raises(WorkerDied, match="killed by signal SIGKILL"):
            manager.run(slow, tmp_path / "slow")
        killer.join()
        assert manager.worker is None  # the dead worker is dropped
        lines = raw.read_text().splitlines()
        assert not any('"kind": "end"' in line for line in lines)  # what it wrote stays readable, marked unfinished

        after = manager.run(job_cfg(tiny_model), tmp_path / "after")  # same engine settings, fresh worker
        assert after["status"] == "completed" and manager.worker.pid != doomed_pid
        assert header(tmp_path / "after")["engine_reused"] is False
    finally:
        manager.stop()


def test_stop_ends_the_worker_process(tiny_model: Path, tmp_path: Path) -> None:
    manager = WorkerManager()
    manager.run(job_cfg(tiny_model, n_prompts=1), tmp_path / "a")
    process = manager.worker.process
    manager.stop()
    assert not process.is_alive() and process.exitcode == 0


def test_the_worker_may_start_processes_of_its_own(tiny_model: Path) -> None:
    from lem.launch.job import EngineWorker

    worker = EngineWorker()  # engines such as vLLM spawn their own engine-core process from it
    try:
        assert worker.process.daemon is False
    finally:
        worker.close()
    assert worker.process.exitcode == 0
