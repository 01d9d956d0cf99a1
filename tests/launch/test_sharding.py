"""Multi-process runs on CPU (gloo): data-parallel replicas and tensor-parallel ranks, one raw record file each."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.test_end_to_end import lem_command, lem_env, read_lines
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def run(tmp_path: Path, tiny_model: Path, *overrides: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    run_dir = tmp_path / "run"
    cmd = [c for c in lem_command(run_dir, tiny_model, "flops.strategy=analytical", *overrides) if c != "backend.pytorch.num_threads=1"]
    result = subprocess.run(cmd, cwd=tmp_path, env=lem_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, run_dir


def test_data_parallel_replicas_split_the_prompts(tiny_model: Path, tmp_path: Path) -> None:
    result, run_dir = run(tmp_path, tiny_model, "sharding=data_parallel", "sharding.num_processes=2", "dataset.n_prompts=8",
                          "dataset.max_output_tokens=6", "batching.batch_size=2")
    files = sorted((run_dir / "raw").glob("process-*.jsonl"))
    assert [f.name for f in files] == ["process-0.jsonl", "process-1.jsonl"]
    per_rank = [read_lines(f) for f in files]
    ids = [sorted(line["request_id"] for line in lines if line["kind"] == "request") for lines in per_rank]
    assert ids == [[0, 2, 4, 6], [1, 3, 5, 7]]  # every 2nd prompt each, none twice
    headers = [lines[0] for lines in per_rank]
    assert [(h["process_index"], h["world_size"]) for h in headers] == [(0, 2), (1, 2)]
    assert len({h["pid"] for h in headers}) == 2  # two processes
    # Host meters (CPU/RAM estimate) are read by rank 0 only, so the host is not counted twice.
    gen = [next(line for line in lines if line["kind"] == "phase" and line["name"] == "generation") for lines in per_rank]
    assert {r["component"] for r in gen[0]["energy"]} == {"cpu", "dram"} and gen[1]["energy"] == []

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_requests"] == 8 and summary["run"]["n_processes"] == 2 and summary["status"] == "completed"
    out = sum(line["output_tokens"] for lines in per_rank for line in lines if line["kind"] == "request")
    assert summary["tokens"]["output_tokens"] == out  # summed over replicas
    t0 = min(h["t0_unix_s"] for h in headers)
    starts = [h["t0_unix_s"] - t0 + g["start_s"] for h, g in zip(headers, gen)]
    ends = [h["t0_unix_s"] - t0 + g["end_s"] for h, g in zip(headers, gen)]
    assert summary["throughput"]["generation_wall_s"] == pytest.approx(max(ends) - min(starts), rel=1e-6)  # span of both
    assert summary["run"]["process_overlap_fraction"] > 0.5  # the ranks start together (barrier)
    assert not any("no energy source available" in w for w in summary["warnings"])
    assert "results:" in result.stdout


def test_tensor_parallel_ranks_share_each_layer(tiny_model: Path, tmp_path: Path) -> None:
    _, run_dir = run(tmp_path, tiny_model, "sharding=tensor_parallel", "sharding.num_shards=2", "dataset.n_prompts=4",
                     "dataset.max_output_tokens=5", "batching.batch_size=2", "dataset.ignore_eos=true")
    per_rank = [read_lines(f) for f in sorted((run_dir / "raw").glob("process-*.jsonl"))]
    assert len(per_rank) == 2
    requests = [[line for line in lines if line["kind"] == "request"] for lines in per_rank]
    assert len(requests[0]) == 4 and requests[1] == []  # rank 0 records the tokens every rank produced together
    assert all(r["output_tokens"] == 5 for r in requests[0])
    for rank, lines in enumerate(per_rank):  # every rank ran every phase; idle only where the rank has meters (rank 0 here)
        idle = ["idle_baseline"] if rank == 0 else []
        assert [line["name"] for line in lines if line["kind"] == "phase"] == ["engine_init", "model_load", *idle, "warmup", "generation"]
        assert lines[0]["engine_settings"]["sharding"] == "tensor_parallel"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_requests"] == 4 and summary["tokens"]["output_tokens"] == 20


def test_tensor_parallel_greedy_tokens_match_a_single_process(tiny_model: Path, tmp_path: Path) -> None:
    common = ("dataset.n_prompts=3", "dataset.max_output_tokens=6", "batching.batch_size=1", "backend.pytorch.num_threads=1")
    (tmp_path / "tp").mkdir()
    (tmp_path / "one").mkdir()
    _, tp_dir = run(tmp_path / "tp", tiny_model, "sharding=tensor_parallel", "sharding.num_shards=2", *common)
    _, one_dir = run(tmp_path / "one", tiny_model, *common)

    def outputs(run_dir: Path) -> dict[int, tuple[int, int]]:
        lines = read_lines(run_dir / "raw" / "process-0.jsonl")
        return {line["request_id"]: (line["input_tokens"], line["output_tokens"]) for line in lines if line["kind"] == "request"}

    assert outputs(tp_dir) == outputs(one_dir)  # same prompts, same greedy lengths: the split model computes the same


@pytest.mark.gpu
def test_pipeline_parallel_on_two_gpus(tiny_model: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    _, run_dir = run(tmp_path, tiny_model, "backend.device=cuda", "sharding=pipeline_parallel", "sharding.num_shards=2",
                     "dataset.n_prompts=4", "dataset.max_output_tokens=5")
    header = read_lines(run_dir / "raw" / "process-0.jsonl")[0]
    assert header["cuda_device_indices"] == [0, 1] and len(header["device_names"]) == 2
