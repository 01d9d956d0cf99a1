"""Energy per request and prefill vs decode energy against synthetic timelines with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lem.records import (
    EnergyReading,
    HeaderRecord,
    PhaseRecord,
    PowerSamplesRecord,
    RequestRecord,
    to_json_dict,
)
from lem.results.attribution import item_flops, slice_edges, split_energy, work_items
from lem.results.reader import RawProcessRecords
from lem.results.request_energy import attribute_run, attribution_section, request_rows
from lem.results.steady_state import power_series


def request(i: int, arrival: float, start: float, token_times: list[float], n_in: int = 10) -> dict:
    return to_json_dict(RequestRecord(
        request_id=i, batch_id=None, batch_size=None, input_tokens=n_in, output_tokens=len(token_times),
        arrival_s=arrival, start_s=start, first_token_s=token_times[0] if token_times else None,
        end_s=token_times[-1] if token_times else start, token_times_s=token_times, finish_reason="length",
    ))


def split(requests: list[dict], window: tuple[float, float], power_w, cost=None):
    """Split the energy of ``power_w(t)`` (integrated exactly per slice by the midpoint of a step function)."""
    items = work_items(requests, cost)
    edges = slice_edges(items, requests, window)
    energy = np.asarray([power_w((a + b) / 2) * (b - a) for a, b in zip(edges, edges[1:])])
    return split_energy(items, requests, edges, energy)


def test_constant_power_equal_requests_in_one_batch_split_evenly_and_sum_exactly():
    reqs = [request(i, 0.0, 0.0, [1.0, 2.0, 3.0]) for i in range(4)]
    s = split(reqs, (0.0, 3.0), lambda t: 40.0)
    assert s.request_j == pytest.approx([30.0] * 4)
    assert s.prefill_j == pytest.approx([10.0] * 4)  # 0 → 1 s: prefill
    assert s.decode_j == pytest.approx([20.0] * 4)
    assert s.request_j.sum() + s.unattributed_j == pytest.approx(120.0, rel=1e-12)
    assert abs(s.residual_j) < 1e-9


def test_a_prefill_spike_lands_on_prefill_and_longer_prompts_pay_more_of_it():
    # Two requests in one batch: prompts of 10 and 30 tokens, prefill 0 → 1 s at 200 W, decode at 20 W.
    reqs = [request(0, 0.0, 0.0, [1.0, 2.0], n_in=10), request(1, 0.0, 0.0, [1.0, 2.0], n_in=30)]
    s = split(reqs, (0.0, 2.0), lambda t: 200.0 if t < 1.0 else 20.0)  # token weighting: prefill = input tokens
    assert s.prefill_j == pytest.approx([50.0, 150.0])  # 200 J in proportion 10 : 30
    assert s.decode_j == pytest.approx([10.0, 10.0])  # one decode step each
    assert s.prefill_j.sum() / s.total_j == pytest.approx(200 / 220)


def test_flops_weights_a_prefill_by_its_attention_and_a_decode_step_by_its_context():
    cost = {"per_token_flops": 100.0, "per_query_key_flops": 2.0, "per_logit_flops": 50.0}
    f = item_flops(cost)
    assert f(np.array([0]), np.array([10]), np.array([0]))[0] == 100 * 10 + 2 * 55 + 50  # causal pairs 10·11/2
    assert f(np.array([1]), np.array([10]), np.array([3]))[0] == 100 + 2 * 13 + 50  # 3rd decode step: 13 keys


def test_a_mixed_step_splits_by_work_between_one_requests_decode_and_anothers_prefill():
    # A decodes over 0..2 (steps ending at 1 and 2); B arrives at 1 and is prefilled in the step 1 → 2.
    cost = {"per_token_flops": 1.0, "per_query_key_flops": 0.0, "per_logit_flops": 0.0}  # FLOPs = tokens fed
    a = request(0, 0.0, 0.0, [0.5, 1.0, 2.0], n_in=4)  # prefill 0 → 0.5 (4), decode 0.5 → 1 (1), 1 → 2 (1)
    b = request(1, 1.0, 1.0, [2.0], n_in=9)  # prefill 1 → 2 (9)
    s = split([a, b], (0.0, 2.0), lambda t: 100.0, cost)
    # Slice 1 → 2 holds 100 J: A's decode step weighs 1, B's prefill 9.
    assert s.decode_j[0] == pytest.approx(50.0 + 10.0)
    assert s.prefill_j[1] == pytest.approx(90.0)
    assert s.prefill_j[0] == pytest.approx(50.0)
    assert s.request_j.sum() == pytest.approx(200.0)


def test_idle_gaps_go_to_the_requests_waiting_and_empty_time_is_unattributed():
    # A runs 0 → 1; B arrived at 0 but waits until 2 (lem's gap 1 → 2), runs 2 → 3; nothing in flight 3 → 4.
    a = request(0, 0.0, 0.0, [1.0])
    b = request(1, 0.0, 2.0, [3.0])
    s = split([a, b], (0.0, 4.0), lambda t: 10.0)
    assert s.waiting_j == pytest.approx([0.0, 10.0])  # 1 → 2: only B is in the system
    # 0 → 1: A computes, B waits — the computing request takes that slice's energy.
    assert s.prefill_j == pytest.approx([10.0, 10.0])
    assert s.unattributed_j == pytest.approx(10.0)
    assert s.request_j.sum() + s.unattributed_j == pytest.approx(40.0)


def test_tokens_of_one_streamed_chunk_share_its_step():
    # Three tokens arrive together at 2.0 (one chunk): they share the span 1 → 2, none of them is a point.
    r = request(0, 0.0, 0.0, [1.0, 2.0, 2.0, 2.0])
    s = split([r], (0.0, 2.0), lambda t: 30.0)
    assert s.decode_j[0] == pytest.approx(30.0) and s.prefill_j[0] == pytest.approx(30.0)


def test_many_tokens_are_split_fast_and_exactly():
    rng = np.random.default_rng(0)
    reqs = []
    for i in range(400):
        start = float(rng.uniform(0, 50))
        times = np.cumsum(rng.uniform(0.01, 0.05, size=500)) + start
        reqs.append(request(i, start, start, times.tolist(), n_in=int(rng.integers(5, 500))))
    cost = {"per_token_flops": 2.7e8, "per_query_key_flops": 1.1e4, "per_logit_flops": 8.5e7}
    end = max(r["end_s"] for r in reqs)
    s = split(reqs, (0.0, end), lambda t: 100.0 + 50 * np.sin(t), cost)
    assert abs(s.residual_j) / s.total_j < 1e-9
    assert (s.request_j > 0).all()


def _process(requests: list[dict], power_t: list[float], energy_j: list[float], gen_energy_j: float, idle_w: float | None) -> RawProcessRecords:
    header = HeaderRecord(0, 1, 1.7e9, "host", 1, "0.1.0", "cpu", ["cpu"], "pytorch", "t", "tiny", "float32", 2)
    phase = PhaseRecord("generation", 0.0, 4.0, energy=[
        EnergyReading("cpu", "cpu", energy_j=gen_energy_j, source="estimated", idle_power_w=idle_w,
                      net_energy_j=None if idle_w is None else gen_energy_j - idle_w * 4.0),
        EnergyReading("ram", "dram", energy_j=8.0, source="estimated"),
    ])
    samples = PowerSamplesRecord("cpu", "cpu", "counter_delta", "estimated", t_s=power_t, power_w=[None] * len(power_t), energy_j=energy_j)
    return RawProcessRecords(path=Path("process-0.jsonl"), header=to_json_dict(header), phases=[to_json_dict(phase)],
                             requests=requests, other=[to_json_dict(samples)])


def test_the_timeline_shapes_the_split_and_the_phase_figure_sets_the_total():
    # Counter: 60 J in 0 → 1 (prefill of A), 20 J over 1 → 4; the phase says 160 J: scaled by 2.
    reqs = [request(0, 0.0, 0.0, [1.0, 2.0, 3.0, 4.0])]
    p = _process(reqs, [0.0, 1.0, 4.0], [0.0, 60.0, 80.0], gen_energy_j=160.0, idle_w=5.0)
    att = attribute_run([p], power_series([p]))
    assert att.accel.prefill_j[0] == pytest.approx(120.0) and att.accel.decode_j[0] == pytest.approx(40.0)
    warnings: list[str] = []
    section = attribution_section(att, run_energy_j=500.0, pue=1.2, warnings=warnings)
    b = section["boundaries"]
    assert b["accelerator_net"]["components"] == ["cpu"] and b["accelerator_net"]["estimated"] is True
    assert b["accelerator_net"]["total_j"] == pytest.approx(160.0 - 20.0)  # net of 5 W x 4 s
    assert b["device_host_gross"]["total_j"] == pytest.approx(168.0)  # + 8 J of DRAM, spread evenly
    assert b["all_in"]["wh_per_request"]["mean"] == pytest.approx(500.0 * 1.2 / 3600)
    assert section["check"]["residual_j"] == pytest.approx(0.0, abs=1e-9) and not warnings
    assert section["prefill_decode"]["accelerator_net"]["prefill_j"] == pytest.approx(120.0 - 5.0)
    assert section["energy_shape"] == "timeline+uniform in time"  # DRAM had no timeline
    row = request_rows(att, 500.0, 1.2)[0]
    assert row["device_host_gross_j"] == pytest.approx(168.0) and row["accelerator_net_j"] == pytest.approx(140.0)


def test_no_idle_baseline_leaves_net_per_request_null_not_zero():
    reqs = [request(0, 0.0, 0.0, [1.0, 2.0])]
    p = _process(reqs, [0.0, 4.0], [0.0, 10.0], gen_energy_j=10.0, idle_w=None)
    att = attribute_run([p], power_series([p]))
    section = attribution_section(att, None, None, [])
    assert section["boundaries"]["accelerator_net"]["j_per_request"]["mean"] is None
    assert section["boundaries"]["all_in"]["wh_per_request"]["mean"] is None
    assert request_rows(att, None, None)[0]["accelerator_net_j"] is None


def test_estimated_host_energy_beside_a_measured_gpu_is_left_out_not_added():
    header = HeaderRecord(0, 1, 1.7e9, "host", 1, "0.1.0", "cuda", ["NVIDIA H100"], "vllm", "v", "m", "bfloat16", None)
    phase = PhaseRecord("generation", 0.0, 2.0, energy=[
        EnergyReading("cuda:0", "gpu", energy_j=100.0, source="counter", idle_power_w=10.0),
        EnergyReading("cpu", "cpu", energy_j=40.0, source="estimated"),
    ])
    p = RawProcessRecords(path=Path("p.jsonl"), header=to_json_dict(header), phases=[to_json_dict(phase)],
                          requests=[request(0, 0.0, 0.0, [1.0, 2.0])])
    section = attribution_section(attribute_run([p], power_series([p])), None, None, [])
    gross = section["boundaries"]["device_host_gross"]
    assert gross["components"] == ["gpu"] and gross["energy_source"] == "counter" and gross["estimated"] is False
    assert gross["total_j"] == pytest.approx(100.0) and gross["left_out"] == ["cpu (estimated)"]
    assert section["boundaries"]["accelerator_net"]["total_j"] == pytest.approx(100.0 - 10.0 * 2.0)
    assert section["check"]["generation_energy_j"] == pytest.approx(100.0)  # the headline's measured figure
