"""backend=vllm through lem's job machinery for real (vLLM's CPU build, the embedded model): the
command users type first, a sweep that reuses the engine, and a killed engine worker that fails
only its job and leaves no engine process behind.

Skips without vLLM; CI sets LEM_REQUIRE_VLLM=1 so a failed install fails these tests instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lem.backends.vllm.engine import cpu_has_amx
from lem.config.schema import BackendName, LemConfig
from lem.config.types import BatchingStrategy, Device, FlopsStrategy
from lem.launch.job import WorkerDied, WorkerManager
from tests.backends.real_vllm import NEEDS_VLLM_CPU

pytestmark = NEEDS_VLLM_CPU

def left_in_group(pgid: int, timeout_s: float = 30.0) -> list[str]:
    """Processes still alive in process group ``pgid`` (an engine worker's: it and all it started),
    after waiting up to ``timeout_s`` for them to go."""
    import psutil

    def alive() -> list[str]:
        found = []
        for proc in psutil.process_iter(["pid", "name", "status"]):
            try:
                if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(f"{proc.pid} {proc.info['name']}")
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    deadline = time.monotonic() + timeout_s
    left = alive()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = alive()
    return left


def read_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "raw" / "process-0.jsonl").read_text().splitlines()]


def test_the_first_command_users_type_runs_and_a_sweep_reuses_the_engine(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable, "-m", "lem", "-m", "backend=vllm", "batching=sorted_dynamic,continuous", "experiment=quick",
            "dataset.n_prompts=8", "dataset.max_output_tokens=8", "dataset.ignore_eos=true", "energy.idle_baseline_s=0.5",
            "tracking.enabled=false", "flops.strategy=analytical", f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "engine ran" in result.stdout  # the summary shows the batch the engine ran per step
    first, second = read_lines(sweep_dir / "0"), read_lines(sweep_dir / "1")
    assert first[0]["engine"] == "vllm" and first[0]["device_type"] == "cpu"
    assert first[0]["dtype"] == ("bfloat16" if cpu_has_amx() else "float32")  # dtype=auto on vLLM's CPU build
    assert first[0]["engine_reused"] is False and second[0]["engine_reused"] is True  # one engine for the sweep
    assert first[0]["pid"] == second[0]["pid"]
    # The reused engine pays no setup, but idle is measured in the same state as the first job's: model loaded.
    assert [r["name"] for r in first if r["kind"] == "phase"] == ["engine_init", "model_load", "idle_baseline", "warmup", "generation"]
    assert [r["name"] for r in second if r["kind"] == "phase"] == ["idle_baseline", "warmup", "generation"]
    assert [r["state"] for job in (first, second) for r in job if r["kind"] == "idle_baseline"] == ["model_loaded", "model_loaded"]
    summaries = [json.loads((sweep_dir / job / "summary.json").read_text()) for job in ("0", "1")]
    grouped, continuous = (s["batching"] for s in summaries)
    assert grouped["strategy"] == "sorted_dynamic" and grouped["n_batches"] >= 1
    assert continuous["strategy"] == "continuous" and continuous["n_batches"] == 0
    for section in (grouped, continuous):
        steps = section["engine_steps"]
        assert steps["source"] == "vllm scheduler stats" and steps["n_steps"] >= 8
        assert 1 <= steps["max_running"] <= 8 and steps["mean_running"] > 1
    for s in summaries:
        assert s["tokens"]["output_tokens"] == 8 * 8  # ignore_eos: every request exactly 8 tokens
    assert left_in_group(first[0]["pid"]) == []  # the sweep's end stopped the worker, vLLM's engine core and its worker


def vllm_job(n_prompts: int, max_output_tokens: int) -> LemConfig:
    cfg = LemConfig()
    cfg.backend.name, cfg.backend.device = BackendName.vllm, Device.cpu
    cfg.batching.strategy, cfg.batching.batch_size = BatchingStrategy.continuous, 1
    cfg.dataset.n_prompts, cfg.dataset.max_output_tokens, cfg.dataset.ignore_eos = n_prompts, max_output_tokens, True
    cfg.energy.idle_baseline_s = 0.0
    cfg.tracking.enabled = False
    cfg.flops.strategy = FlopsStrategy.analytical
    return cfg


def test_a_killed_engine_worker_fails_its_job_only_and_leaves_no_engine_behind(tmp_path: Path) -> None:
    manager = WorkerManager()
    doomed: list[int] = []
    try:
        raw = tmp_path / "doomed" / "raw" / "process-0.jsonl"

        def kill_when_generating() -> None:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if raw.exists() and '"kind": "request"' in raw.read_text():
                    doomed.append(manager.worker.pid)
                    os.kill(doomed[0], signal.SIGKILL)
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_generating)
        killer.start()
        with pytest.raises(WorkerDied, match="killed by signal SIGKILL"):
            manager.run(vllm_job(n_prompts=64, max_output_tokens=32), tmp_path / "doomed")
        killer.join()
        assert manager.worker is None
        assert not any('"kind": "end"' in line for line in raw.read_text().splitlines())  # marked unfinished
        assert left_in_group(doomed[0], timeout_s=10) == []  # vLLM's engine core and worker were ended with it

        after = manager.run(vllm_job(n_prompts=2, max_output_tokens=4), tmp_path / "after")
        assert after["status"] == "completed" and after["tokens"]["output_tokens"] == 8
        survivor = manager.worker.pid
    finally:
        manager.stop()
    assert left_in_group(survivor) == []
