"""The summary's compute figures: MFU against every GPU the run uses, executed and useful FLOPs side by side."""

from __future__ import annotations

import pytest

from lem.records import FlopsRecord, PhaseRecord
from lem.report.table import render_summary
from lem.results.aggregate import summarize
from tests.results.test_aggregate import proc, req

H100 = "NVIDIA H100 80GB HBM3"
PEAK = 989.5e12  # H100 SXM, bfloat16, dense


def gpu_proc(index: int, cuda_indices: list[int], flops: FlopsRecord, world_size: int = 1, n_requests: int = 1):
    p = proc(index, world_size=world_size, phases=[PhaseRecord("generation", 0.0, 10.0)],
             requests=[req(i, 0.0, n_out=100, n_in=50) for i in range(n_requests)], flops=flops)
    p.header.update(device_type="cuda", device_names=[H100] * len(cuda_indices), dtype="bfloat16", cuda_device_indices=cuda_indices)
    return p


def counted(peak: float | None, n_devices: int | None, executed: float = 2e15, useful: float = 1e15) -> FlopsRecord:
    return FlopsRecord(total_flops=executed, useful_flops=useful, prefill_flops=0.75 * executed, decode_flops=0.25 * executed,
                       useful_prefill_flops=0.5 * useful, useful_decode_flops=0.5 * useful, source="analytical",
                       peak_flops_per_s=peak, n_devices=n_devices, peak_flops_per_s_per_device=PEAK if peak else None)


def test_pipeline_parallel_mfu_counts_both_stages():
    # lem's pipeline_parallel: one process drives two GPUs, one stage each.
    f = summarize([gpu_proc(0, [0, 1], counted(2 * PEAK, 2))])["flops"]
    assert f["n_devices"] == 2 and f["peak_flops_per_s"] == 2 * PEAK and f["peak_flops_per_s_per_device"] == PEAK
    assert f["mfu"] == pytest.approx(1e15 / 10.0 / (2 * PEAK))  # useful FLOP/s over both GPUs' peak
    assert f["hfu"] == pytest.approx(2e15 / 10.0 / (2 * PEAK))


def test_records_written_before_n_devices_are_scaled_by_the_devices_the_header_lists():
    p = gpu_proc(0, [0, 1], counted(PEAK, None))
    for key in ("n_devices", "peak_flops_per_s_per_device", "useful_prefill_flops", "useful_decode_flops"):
        p.flops[0].pop(key)  # an older raw record: one GPU's peak, no useful split
    f = summarize([p])["flops"]
    assert f["peak_flops_per_s"] == 2 * PEAK and f["mfu"] == pytest.approx(1e15 / 10.0 / (2 * PEAK))
    assert f["useful_prefill_share"] is None  # not recorded then: unknown, not 0


def test_tensor_parallel_ranks_add_their_gpus_once_each():
    # Two lem ranks, one GPU each; rank 0 records the requests (and their FLOPs), rank 1 none.
    ranks = [gpu_proc(0, [0], counted(PEAK, 1), world_size=2),
             gpu_proc(1, [1], counted(PEAK, 1, executed=0.0, useful=0.0), world_size=2, n_requests=0)]
    f = summarize(ranks)["flops"]
    assert f["n_devices"] == 2 and f["peak_flops_per_s"] == 2 * PEAK
    assert f["mfu"] == pytest.approx(1e15 / 10.0 / (2 * PEAK))


def test_executed_and_useful_per_token_and_prefill_shares():
    s = summarize([gpu_proc(0, [0], counted(PEAK, 1), n_requests=2)])
    f = s["flops"]
    assert f["executed_flops_per_output_token"] == pytest.approx(2e15 / 200)
    assert f["useful_flops_per_output_token"] == pytest.approx(1e15 / 200)
    assert f["executed_flops_per_token"] == pytest.approx(2e15 / 300)  # 100 input + 200 output tokens
    assert f["useful_flops_per_token"] == pytest.approx(1e15 / 300)
    assert (f["executed_prefill_share"], f["useful_prefill_share"]) == (pytest.approx(0.75), pytest.approx(0.5))
    assert (f["useful_prefill_flops"], f["useful_decode_flops"]) == (5e14, 5e14)
    text = render_summary(s).splitlines()
    assert any("executed FLOPs" in ln and "2 PFLOP" in ln and "75 % prefill" in ln for ln in text)
    assert any("useful FLOPs" in ln and "1 PFLOP" in ln and "50 % prefill" in ln for ln in text)
    assert any("FLOPs / output tok" in ln and "executed 10 TFLOP, useful 5 TFLOP" in ln for ln in text)


def test_table_names_the_gpus_behind_the_peak():
    text = render_summary(summarize([gpu_proc(0, [0, 1], counted(2 * PEAK, 2))]))
    mfu = next(ln for ln in text.splitlines() if ln.strip().startswith("MFU"))
    assert "2 GPUs" in mfu and "1.98 PFLOP/s peak" in mfu
