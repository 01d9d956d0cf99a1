"""`python -m lem` end to end in a subprocess on a tiny random-weight model: records, summary, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny_model import make_tiny_model_dir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def lem_command(run_dir: Path, model_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lem",
        f"model.name_or_path={model_dir}",
        f"hydra.run.dir={run_dir}",
        "backend.pytorch.num_threads=1",
        "energy.idle_baseline_s=0.5",
        "tracking.enabled=false",
        *overrides,
    ]


def lem_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_records_and_summary(tiny_model: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    n_prompts, max_out = 6, 8
    result = subprocess.run(
        lem_command(run_dir, tiny_model, f"dataset.n_prompts={n_prompts}", f"dataset.max_output_tokens={max_out}", "batching.batch_size=4",
                    # A latency objective every request meets, and this CPU's limits for the physical floor.
                    "slo.ttft_ms=600000", "hardware.peak_tflops=0.5", "hardware.memory_bandwidth_gb_per_s=20", "hardware.power_w=50"),
        cwd=tmp_path, env=lem_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    lines = read_lines(run_dir / "raw" / "process-0.jsonl")
    assert lines[0]["kind"] == "header" and lines[0]["schema_version"] == "lem.raw/1"
    end = lines[-1]
    assert {k: end[k] for k in ("status", "kind")} == {"status": "completed", "kind": "end"} and end["end_s"] > 0
    assert end["cpu_count"] >= 1 and end["lem_busy_cores"] > 0  # the host's load during generation, for the busy-host warning

    phases = [line for line in lines if line["kind"] == "phase"]
    # Idle is measured after the model is loaded (one defined state for every job), as a phase of its own.
    assert [p["name"] for p in phases] == ["engine_init", "model_load", "idle_baseline", "warmup", "generation"]
    assert all(p["end_s"] >= p["start_s"] for p in phases)
    assert all(a["end_s"] <= b["start_s"] + 1e-9 for a, b in zip(phases, phases[1:]))
    generation = phases[-1]

    requests = [line for line in lines if line["kind"] == "request"]
    assert sorted(r["request_id"] for r in requests) == list(range(n_prompts))
    assert sorted(r["batch_size"] for r in requests) == [2, 2, 4, 4, 4, 4]
    for r in requests:
        assert 1 <= r["output_tokens"] <= max_out
        assert len(r["token_times_s"]) == r["output_tokens"]
        assert r["token_times_s"] == sorted(r["token_times_s"])
        assert generation["start_s"] <= r["arrival_s"] <= r["start_s"] < r["first_token_s"] <= r["end_s"] <= generation["end_s"]
        assert r["first_token_s"] == r["token_times_s"][0] and r["end_s"] == r["token_times_s"][-1]
        assert r["input_tokens"] >= 1 and r["padded_input_tokens"] >= r["input_tokens"]
        assert r["finish_reason"] in ("stop", "length")

    memory = next(line for line in lines if line["kind"] == "memory")
    assert memory["peak_rss_bytes"] > 50 * 2**20  # torch alone is bigger than that

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_requests"] == n_prompts
    total_out = sum(r["output_tokens"] for r in requests)
    assert summary["tokens"]["output_tokens"] == total_out
    span_s = generation["end_s"] - generation["start_s"]  # throughput is over the generation phase's wall clock
    assert summary["throughput"]["output_tokens_per_s"] == pytest.approx(total_out / span_s, rel=1e-9)
    assert min(r["start_s"] for r in requests) - generation["start_s"] < 0.05  # the phase opens right before serving
    assert summary["latency"]["ttft_ms"]["p50"] > 0
    # No RAPL and no GPU here: CPU and RAM energy come from CodeCarbon's model, labelled estimated;
    # there is no GPU reading at all (null, never 0).
    energy = summary["energy"]
    assert energy["source"] == "estimated" and energy["j_per_output_token"] > 0
    assert {g["component"] for g in energy["by_component"]} == {"cpu", "dram"}
    assert all(g["source"] == "estimated" for g in energy["by_component"])
    assert energy["measured_j_per_output_token"] is None
    assert any("estimated" in w for w in summary["warnings"])
    for p in phases:
        assert {r["component"] for r in p["energy"]} == {"cpu", "dram"} and all(r["source"] == "estimated" for r in p["energy"])
    phase_sum = sum(summary["phases"][n]["energy_j"] for n in ("engine_init", "model_load", "idle_baseline", "warmup", "generation"))
    assert phase_sum == pytest.approx(energy["run_energy_j"], rel=0.005)  # E_total = sum of phases
    idle = {d["device"]: d for d in energy["idle_baseline"]["devices"]}
    assert set(idle) == {"cpu", "ram"} and all(d["mean_power_w"] > 0 for d in idle.values())
    assert energy["idle_baseline"]["state"] == "model_loaded"
    assert energy["idle_baseline"]["settled"] is None  # estimated power only: nothing measured to settle on
    # Warmup ran the run's largest shape (batch of 4, longest prompts) at the run's output length, and says why it stopped.
    warmup = next(line for line in lines if line["kind"] == "warmup")
    assert warmup["largest_batch_size"] == 4 and warmup["max_output_tokens"] == max_out and warmup["passes"] >= 1
    assert warmup["stable"] is None and "no measured power" in warmup["criterion"]
    assert summary["warmup"]["passes"] == warmup["passes"]
    assert summary["flops"]["total_flops"] > 0 and summary["flops"]["source"] in ("calflops", "analytical")

    # The batch the engine ran: one engine_steps row per lem batch (auto = static batches of 4 for PyTorch).
    steps = [line for line in lines if line["kind"] == "engine_steps"]
    assert steps and {s["source"] for s in steps} == {"lem batches"}
    running = [n for s in steps for n in s["running"]]
    weights = [n for s in steps for n in s["steps"]]
    assert sorted(running) == [2, 4] and sum(weights) <= 2 * max_out
    batching = summary["batching"]
    assert batching["strategy"] == "static" and batching["batch_size"] == 4 and batching["n_batches"] == 2
    assert batching["engine_steps"]["max_running"] == 4
    assert batching["engine_steps"]["mean_running"] == pytest.approx(sum(r * w for r, w in zip(running, weights)) / sum(weights))
    assert "engine ran" in result.stdout

    assert (run_dir / "resolved_config.yaml").is_file()
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert "TTFT" in result.stdout and str(run_dir) in result.stdout

    # Energy per request: every request's share, at three labelled boundaries, adds up to the generation energy.
    attribution = summary["attribution"]
    assert attribution["weighting"] == "flops" and attribution["n_requests"] == n_prompts
    check = attribution["check"]
    assert check["attributed_j"] + check["unattributed_j"] == pytest.approx(check["generation_energy_j"], rel=1e-9)
    assert check["generation_energy_j"] == pytest.approx(sum(r["energy_j"] for r in generation["energy"]), rel=1e-9)
    bounds = attribution["boundaries"]
    assert bounds["accelerator_net"]["components"] == ["cpu"] and bounds["device_host_gross"]["components"] == ["cpu", "dram"]
    assert all(b["estimated"] and b["energy_source"] == "estimated" for b in bounds.values())
    assert bounds["all_in"]["total_j"] == pytest.approx(energy["run_energy_j"], rel=1e-9)  # PUE 1
    split = attribution["prefill_decode"]["device_host_gross"]
    assert split["prefill_j"] > 0 and split["decode_j"] > 0
    assert split["prefill_share"] + split["decode_share"] + split["waiting_share"] + split["unattributed_share"] == pytest.approx(1.0)
    rows = read_lines(run_dir / "request_energy.jsonl")
    assert sorted(r["request_id"] for r in rows) == list(range(n_prompts))
    assert sum(r["device_host_gross_j"] for r in rows) == pytest.approx(check["attributed_j"], rel=1e-9)
    assert all(r["prefill_j"] + r["decode_j"] + r["waiting_j"] == pytest.approx(r["device_host_gross_j"]) for r in rows)
    assert "energy per request (estimated" in result.stdout and "prefill / decode" in result.stdout
    floor = summary["floor"]  # a CPU: the limits come from hardware.*, said so
    assert floor["sources"]["power_w"] == "hardware.power_w" and floor["power_w"] == 50.0
    assert floor["compute_j_per_output_token"] == pytest.approx(summary["flops"]["useful_flops_per_output_token"] * 50 / 0.5e12)
    assert floor["weight_bytes"] > 0 and floor["kv_cache_bytes_per_token"] > 0 and floor["memory_j_per_output_token"] > 0
    assert floor["measured_over_floor"] > 1.0 and "measured ÷ floor" in result.stdout
    goodput = summary["goodput"]
    assert goodput["objectives"] == {"ttft_ms": 600000.0} and goodput["n_good"] == n_prompts
    assert goodput["j_per_good_output_token"] == pytest.approx(energy["j_per_output_token"])

    # Late aggregation: recomputing from the raw records gives the same summary.
    recomputed = subprocess.run(
        [sys.executable, "-m", "lem", "summarize", str(run_dir), "--no-write"], capture_output=True, text=True, timeout=120
    )
    assert recomputed.returncode == 0, recomputed.stderr
    assert "TTFT" in recomputed.stdout


def test_killed_run_leaves_readable_records(tiny_model: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    raw = run_dir / "raw" / "process-0.jsonl"
    proc = subprocess.Popen(
        lem_command(
            run_dir, tiny_model, "dataset.n_prompts=400", "dataset.max_output_tokens=64",
            "dataset.ignore_eos=true", "batching.batch_size=2", "run.warmup_batches=0",
        ),
        cwd=tmp_path, env=lem_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if raw.exists() and raw.read_text().count('"kind": "request"') >= 4:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        else:
            pytest.fail("the run produced no request records in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()

    lines = raw.read_text().splitlines()
    parsed = []
    for i, line in enumerate(lines):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            assert i == len(lines) - 1, "only the very last line may be torn"
    requests = [p for p in parsed if p["kind"] == "request"]
    assert len(requests) >= 4 and all(r["output_tokens"] == 64 for r in requests)
    assert not any(p["kind"] == "end" for p in parsed)

    # The summary command still works and says the run is incomplete.
    result = subprocess.run([sys.executable, "-m", "lem", "summarize", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_requests"] == len(requests)
    assert summary["status"] != "completed"


def test_poisson_traffic_run_records_arrivals_and_queueing(tiny_model: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        lem_command(
            run_dir, tiny_model, "traffic=poisson", "traffic.target_qps=20", "dataset.n_prompts=12",
            "dataset.max_output_tokens=6", "batching.batch_size=4", "report.format=json",
        ),
        cwd=tmp_path, env=lem_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = read_lines(run_dir / "raw" / "process-0.jsonl")
    generation = next(line for line in lines if line["kind"] == "phase" and line["name"] == "generation")
    requests = sorted((line for line in lines if line["kind"] == "request"), key=lambda r: r["arrival_s"])
    assert len(requests) == 12
    arrivals = [r["arrival_s"] for r in requests]
    assert arrivals[0] == pytest.approx(generation["start_s"], abs=0.05)
    assert len(set(arrivals)) == 12  # staggered, not all at t=0
    for r in requests:
        assert r["start_s"] >= r["arrival_s"] - 1e-6  # never served before it arrived
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads(result.stdout) == summary  # report.format=json: stdout is exactly the summary
    assert summary["traffic"]["arrival"] == "poisson" and summary["traffic"]["target_qps"] == 20.0
    assert summary["traffic"]["achieved_qps"] > 0
    table = subprocess.run([sys.executable, "-m", "lem", "summarize", str(run_dir), "--no-write"], capture_output=True, text=True, timeout=120)
    assert "arrivals" in table.stdout and "target 20" in table.stdout


def test_cycles_repeat_generation_on_one_loaded_engine(tiny_model: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        lem_command(run_dir, tiny_model, "cycles=3", "run.cycle_cooldown_s=0.3", "dataset.n_prompts=4", "dataset.max_output_tokens=6"),
        cwd=tmp_path, env=lem_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = read_lines(run_dir / "raw" / "process-0.jsonl")
    phases = [(line["name"], line["cycle"]) for line in lines if line["kind"] == "phase"]
    assert phases == [
        ("engine_init", None), ("model_load", None), ("idle_baseline", None), ("warmup", None),
        ("generation", 0), ("cooldown", 0), ("generation", 1), ("cooldown", 1), ("generation", 2),
    ]
    cooldowns = [line for line in lines if line["kind"] == "phase" and line["name"] == "cooldown"]
    assert all(c["end_s"] - c["start_s"] >= 0.3 for c in cooldowns)
    requests = [line for line in lines if line["kind"] == "request"]
    assert sorted((r["cycle"], r["request_id"]) for r in requests) == [(c, i) for c in range(3) for i in range(4)]
    summary = json.loads((run_dir / "summary.json").read_text())
    cycles = summary["cycles"]
    assert cycles["n_cycles"] == 3 and len(cycles["per_cycle"]) == 3
    st = cycles["stats"]["j_per_output_token"]
    assert st["n"] == 3 and st["ci95_low"] <= st["mean"] <= st["ci95_high"]
    gen_sum = sum(line["end_s"] - line["start_s"] for line in lines if line["kind"] == "phase" and line["name"] == "generation")
    assert summary["throughput"]["generation_wall_s"] == pytest.approx(gen_sum)  # cooldowns not counted
    total = sum(summary["phases"][n]["energy_j"] for n in summary["phases"])
    assert total == pytest.approx(summary["energy"]["run_energy_j"], rel=0.005)  # cooldowns are phases too
    assert "cycles (3 measured)" in result.stdout and "95 % CI" in result.stdout
