"""The physical floor on fixed inputs: an H100 running an 8B model, a CPU with and without hardware.*."""

from __future__ import annotations

from pathlib import Path

import pytest

from lem.records import FlopsRecord, HeaderRecord, to_json_dict
from lem.results.floor import floor_section
from lem.results.reader import RawProcessRecords

WEIGHTS_B = 16e9  # Llama-3.1-8B in bfloat16
KV_B = 131_072.0  # 2 x 32 layers x 8 KV heads x 128 x 2 bytes


def process(device_type: str, names: list[str], enforced_w: float | None = None) -> RawProcessRecords:
    header = HeaderRecord(0, 1, 1.7e9, "host", 1, "0.1.0", device_type, names, "vllm", "v", "m", "bfloat16", None)
    flops = FlopsRecord(total_flops=1.0, source="analytical", weight_bytes=WEIGHTS_B, kv_cache_bytes_per_token=KV_B)
    other = []
    if enforced_w is not None:
        other.append({"kind": "energy_meter", "pue": 1.0, "channels": [
            {"device": "cuda:0", "component": "gpu", "config": {"enforced_power_limit_w": enforced_w}}]})
    return RawProcessRecords(path=Path("p.jsonl"), header=to_json_dict(header), flops=[to_json_dict(flops)], other=other)


def floor(p: RawProcessRecords, config: dict | None = None, accel_j: float = 70.0, wall_s: float = 10.0) -> dict:
    return floor_section(
        [p], config, {"useful_flops_per_output_token": 16e9, "n_devices": 1}, output_tokens=1000, decode_tokens=900,
        inverse_batch=[1 / 64] * 900, context_tokens=[1000.0] * 900, accelerator_j=accel_j, accelerator_net_j=accel_j / 2,
        generation_wall_s=wall_s,
    )


def test_an_h100_at_its_enforced_limit_is_memory_bound_by_hand():
    f = floor(process("cuda", ["NVIDIA H100 80GB HBM3"], enforced_w=500.0))
    assert f["device"] == "H100 SXM" and f["power_w"] == 500.0 and f["sources"]["power_w"] == "enforced NVML power limit"
    assert f["compute_j_per_output_token"] == pytest.approx(16e9 * 500 / 989.5e12)
    per_decode_token = WEIGHTS_B / 64 + KV_B * 1000  # weights shared by the batch + this request's KV cache
    assert f["bytes_per_decode_token"] == pytest.approx(per_decode_token)
    assert f["memory_j_per_output_token"] == pytest.approx(per_decode_token * 900 * 500 / 3.35e12 / 1000)
    assert f["bound"] == "memory" and f["floor_j_per_output_token"] == f["memory_j_per_output_token"]
    assert f["measured_over_floor"] == pytest.approx(0.070 / f["floor_j_per_output_token"])
    assert f["net_measured_over_floor"] == pytest.approx(0.035 / f["floor_j_per_output_token"])
    assert f["mean_decode_batch"] == pytest.approx(64.0)
    assert f["roofline_fraction"] == pytest.approx(f["floor_j_per_output_token"] / 500 / (10.0 / 1000))


def test_without_an_enforced_limit_the_datasheet_tdp_is_the_power_and_a_low_measurement_is_explained():
    f = floor(process("cuda", ["NVIDIA H100 80GB HBM3"]), accel_j=10.0)
    assert f["power_w"] == 700.0 and "H100 SXM x 1" in f["sources"]["power_w"]
    assert f["measured_over_floor"] < 1 and any("drew less than their limit" in n for n in f["notes"])


def test_a_cpu_has_no_floor_unless_the_user_gives_its_limits():
    f = floor(process("cpu", ["AMD EPYC"]))
    assert f["floor_j_per_output_token"] is None and f["measured_over_floor"] is None
    assert any("hardware.peak_tflops" in n for n in f["notes"])
    user = {"hardware": {"peak_tflops": 2.0, "memory_bandwidth_gb_per_s": 100.0, "power_w": 200.0}}
    f = floor(process("cpu", ["AMD EPYC"]), user)
    assert f["compute_j_per_output_token"] == pytest.approx(16e9 * 200 / 2e12)
    assert f["sources"] == {k: f"hardware.{v}" for k, v in (("peak_flops_per_s", "peak_tflops"),
                            ("memory_bandwidth_bytes_per_s", "memory_bandwidth_gb_per_s"), ("power_w", "power_w"))}


def test_an_unknown_gpu_is_null_never_a_guess():
    f = floor(process("cuda", ["NVIDIA GeForce GTX 1080"]))
    assert f["floor_j_per_output_token"] is None and f["peak_flops_per_s"] is None and f["power_w"] is None
