"""FLOPs a reviewer can defend: batches keyed by cycle, useful vs executed split, peaks over every device."""

from __future__ import annotations

import pytest

from lem.measure.flops import (
    RequestTokens,
    analytical_cost,
    count_run_flops,
    flops_summary,
    generation_flops,
    run_flops,
)
from lem.measure.gpu_peaks import devices_peak_flops_per_s
from lem.records import RequestRecord
from tests.measure.test_flops import llama_gqa

H100 = "NVIDIA H100 80GB HBM3"
H100_BF16 = 989.5e12


def record(request_id: int, cycle: int, n_in: int, n_out: int, padded: int, batch_id: int, arrival_s: float) -> RequestRecord:
    times = [arrival_s + 0.01 * (k + 1) for k in range(n_out)]
    return RequestRecord(request_id, batch_id, 1, n_in, n_out, arrival_s, arrival_s, times[0], times[-1], times, "length",
                         padded_input_tokens=padded, cycle=cycle)


def test_batch_ids_that_restart_each_cycle_are_separate_batches():
    # Arrival traffic over two cycles: each cycle's first batch is batch 0 again. A long prompt with a
    # short answer in cycle 0, a short prompt with a long answer in cycle 1: merged into one batch, both
    # rows would run at the long width for the long answer's steps.
    cost = analytical_cost(llama_gqa())
    records = [record(0, 0, 400, 2, 400, 0, 0.0), record(1, 1, 8, 300, 8, 0, 20.0)]
    apart = generation_flops(cost, 400, 2).total_flops + generation_flops(cost, 8, 300).total_flops
    result = run_flops(cost, records)
    assert result.executed.total_flops == pytest.approx(apart)
    assert result.executed == result.useful  # one row per batch, no padding: nothing wasted
    as_dicts = count_run_flops("analytical", [r.__dict__ for r in records], config=llama_gqa())  # raw records on disk
    assert as_dicts.total_flops == pytest.approx(apart)
    # Within one cycle the same id is still one batch.
    same = run_flops(cost, [RequestTokens(400, 2, 400, 0, 1), RequestTokens(8, 300, 400, 0, 1)])
    assert same.executed == generation_flops(cost, 400, 300, batch_size=2)


def test_useful_flops_have_their_own_prefill_decode_split_and_per_token_figures():
    # One padded batch: a 10-token prompt padded to 100 runs 100-wide and keeps decoding to 40 steps.
    reqs = [RequestTokens(10, 5, 100, 0), RequestTokens(100, 40, 100, 0)]
    rec = count_run_flops("analytical", reqs, config=llama_gqa())
    cost = analytical_cost(llama_gqa())
    useful = generation_flops(cost, 10, 5) + generation_flops(cost, 100, 40)
    assert (rec.useful_prefill_flops, rec.useful_decode_flops) == (pytest.approx(useful.prefill_flops), pytest.approx(useful.decode_flops))
    assert rec.useful_prefill_flops < rec.prefill_flops  # the padded prefill is executed, not useful

    s = flops_summary(rec, output_tokens=45, generation_wall_s=1.0, input_tokens=110, device_type="cpu")
    assert s["executed_flops_per_output_token"] == pytest.approx(rec.total_flops / 45)
    assert s["useful_flops_per_output_token"] == pytest.approx(rec.useful_flops / 45)
    assert s["executed_flops_per_token"] == pytest.approx(rec.total_flops / 155)  # input + output tokens
    assert s["useful_flops_per_token"] == pytest.approx(rec.useful_flops / 155)
    assert s["executed_prefill_share"] == pytest.approx(rec.prefill_flops / rec.total_flops)
    assert s["useful_prefill_share"] == pytest.approx(useful.prefill_flops / useful.total_flops)
    assert s["useful_flops_per_output_token"] < s["executed_flops_per_output_token"]
    assert "flops_per_output_token" not in s  # the unlabelled figure is gone: executed or useful, say which
    # Without the input token count the per-token figures are unknown, not 0.
    assert flops_summary(rec, 45, 1.0, device_type="cpu")["useful_flops_per_token"] is None


def test_mfu_divides_by_every_pipeline_stage():
    reqs = [RequestTokens(100, 50)]
    one = count_run_flops("analytical", reqs, config=llama_gqa(), device_names=[H100], dtype="bfloat16")
    two = count_run_flops("analytical", reqs, config=llama_gqa(), device_names=[H100, H100], dtype="bfloat16")
    assert (two.n_devices, two.peak_flops_per_s, two.peak_flops_per_s_per_device) == (2, 2 * H100_BF16, H100_BF16)
    s1 = flops_summary(one, 50, 2.0, device_type="cuda")
    s2 = flops_summary(two, 50, 2.0, device_type="cuda")
    assert s2["mfu"] == pytest.approx(two.useful_flops / 2.0 / (2 * H100_BF16))
    assert s2["mfu"] == pytest.approx(s1["mfu"] / 2)  # the same work on twice the silicon
    assert s2["n_devices"] == 2
    # A process whose record has no peak (GPU unknown then) falls back to the table × its devices.
    assert flops_summary({**two.__dict__, "peak_flops_per_s": None}, 50, 2.0, device_type="cuda", device_name=H100,
                         dtype="bfloat16")["peak_flops_per_s"] == 2 * H100_BF16


def test_a_peak_is_never_a_partial_sum():
    assert devices_peak_flops_per_s([H100, "NVIDIA Mystery GPU"], "bfloat16") is None
    assert devices_peak_flops_per_s([], "bfloat16") is None
    mixed = count_run_flops("off", [], device_names=[H100, "NVIDIA L4"], dtype="bfloat16")
    assert mixed.peak_flops_per_s == H100_BF16 + 121e12 and mixed.peak_flops_per_s_per_device is None
    cpu = count_run_flops("off", [])
    assert (cpu.peak_flops_per_s, cpu.n_devices) == (None, None)
