"""Repeated measured cycles: per-cycle metrics, mean, spread and a 95 % confidence interval; cooldowns not counted."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from lem.records import EnergyReading, FlopsRecord, PhaseRecord
from lem.results.aggregate import summarize
from lem.results.cycles import mean_std_ci95, t975
from tests.results.test_aggregate import proc, req


def cycle_phases(energies_j: list[float], wall_s: float = 10.0, cooldown_s: float = 5.0) -> list[PhaseRecord]:
    phases, t = [PhaseRecord("warmup", 0.0, 1.0, energy=[EnergyReading("cpu-package-0", "cpu", 5.0, "rapl")])], 1.0
    for c, e in enumerate(energies_j):
        phases.append(PhaseRecord("generation", t, t + wall_s, energy=[EnergyReading("cpu-package-0", "cpu", e, "rapl")], cycle=c))
        t += wall_s
        if c < len(energies_j) - 1:
            phases.append(PhaseRecord("cooldown", t, t + cooldown_s, energy=[EnergyReading("cpu-package-0", "cpu", 1.0, "rapl")], cycle=c))
            t += cooldown_s
    return phases


def cycle_requests(n_cycles: int, per_cycle: int = 4, wall_s: float = 10.0, cooldown_s: float = 5.0) -> list:
    out = []
    for c in range(n_cycles):
        start = 1.0 + c * (wall_s + cooldown_s)
        out += [replace(req(i, start + i * 0.5, n_out=100), cycle=c) for i in range(per_cycle)]
    return out


def test_t_quantiles_and_interval_by_hand() -> None:
    assert t975(1) == pytest.approx(12.706, abs=5e-4) and t975(4) == pytest.approx(2.776, abs=5e-4)
    # Exact for every df: past 30 the normal 1.96 would make the interval 3.9 % too narrow at df 31.
    assert t975(31) == pytest.approx(2.0395, abs=1e-4) and t975(200) == pytest.approx(1.9719, abs=1e-4)
    st = mean_std_ci95([1.0, 2.0, 3.0])
    assert st["mean"] == 2.0 and st["std"] == pytest.approx(1.0)
    half = 4.3027 * 1.0 / math.sqrt(3)  # t(0.975, 2) = 4.30265...
    assert (st["ci95_low"], st["ci95_high"]) == (pytest.approx(2.0 - half, abs=1e-4), pytest.approx(2.0 + half, abs=1e-4))
    one = mean_std_ci95([5.0])
    assert one["mean"] == 5.0 and one["std"] is None and one["ci95_low"] is None  # one value: no spread, never 0


def test_cycles_give_per_cycle_metrics_and_intervals() -> None:
    energies = [40.0, 44.0, 42.0]  # 400 tokens per cycle -> 0.10, 0.11, 0.105 J/token
    s = summarize([proc(phases=cycle_phases(energies), requests=cycle_requests(3))], {"dataset": {"n_prompts": 4}, "cycles": 3})
    cy = s["cycles"]
    assert cy["n_cycles"] == 3
    assert [row["j_per_output_token"] for row in cy["per_cycle"]] == pytest.approx([0.10, 0.11, 0.105])
    st = cy["stats"]["j_per_output_token"]
    assert st["mean"] == pytest.approx(0.105) and st["std"] == pytest.approx(0.005)
    assert st["ci95_low"] < 0.105 < st["ci95_high"]
    assert cy["stats"]["output_tokens_per_s"]["mean"] == pytest.approx(40.0)  # 400 tokens / 10 s each
    # Headline: tokens over the three 10 s windows, not over the span that includes two 5 s cooldowns.
    assert s["throughput"]["generation_wall_s"] == pytest.approx(30.0)
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(1200 / 30.0)
    assert s["phases"]["generation"]["wall_s"] == pytest.approx(30.0)
    assert s["phases"]["generation"]["energy_j"] == pytest.approx(126.0)
    assert s["phases"]["cooldown"]["energy_j"] == pytest.approx(2.0)
    assert s["energy"]["j_per_output_token"] == pytest.approx(126.0 / 1200)
    assert not any("requests recorded but" in w for w in s["warnings"])  # 12 = 4 prompts x 3 cycles


def test_single_cycle_has_no_cycles_section() -> None:
    s = summarize([proc(phases=cycle_phases([40.0]), requests=cycle_requests(1))])
    assert s["cycles"] is None


def test_noisy_cycles_are_flagged() -> None:
    s = summarize([proc(phases=cycle_phases([40.0, 60.0]), requests=cycle_requests(2))])
    assert any("varies by" in w and "cycles" in w for w in s["warnings"])


def test_mfu_against_the_gpu_peak() -> None:
    p = proc(phases=[PhaseRecord("generation", 0.0, 10.0)], requests=[req(0, 0.0, n_out=100)],
             flops=FlopsRecord(total_flops=2e15, useful_flops=1e15, source="analytical", peak_flops_per_s=989e12))
    p.header.update(device_type="cuda", device_names=["NVIDIA H100 80GB HBM3"], dtype="bfloat16")
    f = summarize([p])["flops"]
    assert f["flops_per_s"] == pytest.approx(2e14)
    assert f["mfu"] == pytest.approx(1e14 / 989e12)  # useful FLOPs / wall / peak
    assert f["hfu"] == pytest.approx(2e14 / 989e12)  # executed FLOPs / wall / peak


def test_idle_power_of_a_device_counts_once_over_cycles() -> None:
    phases = cycle_phases([40.0, 44.0, 42.0])
    for ph in phases:
        for r in ph.energy:
            r.idle_power_w, r.net_energy_j = 2.0, r.energy_j - 2.0 * (ph.end_s - ph.start_s)
    s = summarize([proc(phases=phases, requests=cycle_requests(3))])
    assert s["energy"]["idle_power_w"] == pytest.approx(2.0)  # one device at 2 W, not 3 windows x 2 W
    assert s["energy"]["net_generation_energy_j"] == pytest.approx(126.0 - 3 * 20.0)


def test_a_positive_metric_never_gets_a_negative_lower_bound() -> None:
    # Three cycles at 0.05, 0.10, 0.20 J/token (CV 65 %): the t interval reaches below 0 J/token.
    s = summarize([proc(phases=cycle_phases([20.0, 40.0, 80.0]), requests=cycle_requests(3))], {"cycles": 3})
    st = s["cycles"]["stats"]["j_per_output_token"]
    half = t975(2) * st["std"] / math.sqrt(3)
    assert st["mean"] - half < 0  # what the interval would have said
    assert st["ci95_low"] == 0.0 and st["ci95_low_clamped"] is True
    assert st["ci95_high"] == pytest.approx(st["mean"] + half)  # the upper bound is the t interval's
    assert any("j_per_output_token" in w and "clamped at 0" in w for w in s["warnings"])
    assert s["cycles"]["stats"]["output_tokens_per_s"]["ci95_low_clamped"] is False  # 40 tok/s every cycle
    # A quantity that can honestly be <= 0 (net of idle) keeps its t interval.
    net = mean_std_ci95([-0.01, 0.02, 0.06])
    assert net["ci95_low"] < 0 and net["ci95_low_clamped"] is False


def test_two_cycles_count_every_batch_and_padding_over_the_same_requests() -> None:
    reqs = []
    for c in range(2):  # batch ids restart every cycle: 0 (two rows) and 1 (one row)
        t = 1.0 + 15.0 * c
        reqs += [replace(req(0, t, n_in=30, batch_id=0, batch_size=2, padded=50), cycle=c),
                 replace(req(1, t, n_in=50, batch_id=0, batch_size=2, padded=50), cycle=c),
                 replace(req(2, t + 2, n_in=20, batch_id=1, batch_size=1, padded=20), cycle=c)]
    b = summarize([proc(phases=cycle_phases([40.0, 40.0]), requests=reqs)])["batching"]
    assert b["n_batches"] == 4 and b["batch_size_histogram"] == {"1": 2, "2": 2}
    assert b["mean_batch_size"] == pytest.approx(6 / 4)  # the 6 requests over the 4 batches that served them
    assert b["padded_input_tokens"] == 240 and b["padding_fraction"] == pytest.approx(40 / 240)


def test_offline_traffic_has_no_achieved_rate_even_over_cycles() -> None:
    # Offline: every request of a cycle arrives at that cycle's start (1 s and 16 s).
    reqs = [replace(req(i, 1.0 + 15.0 * c), cycle=c) for c in range(2) for i in range(4)]
    config = {"traffic": {"arrival": "offline", "target_qps": None}, "cycles": 2}
    assert summarize([proc(phases=cycle_phases([40.0, 40.0]), requests=reqs)], config)["traffic"]["achieved_qps"] is None
    assert summarize([proc(phases=cycle_phases([40.0, 40.0]), requests=reqs)])["traffic"]["achieved_qps"] is None  # no config


def test_achieved_rate_pools_the_gaps_within_each_cycle() -> None:
    # Constant 2 req/s: four arrivals 0.5 s apart in each cycle; the 13.5 s between cycles is no gap.
    reqs = cycle_requests(3)
    config = {"traffic": {"arrival": "constant", "target_qps": 2.0}, "cycles": 3}
    traffic = summarize([proc(phases=cycle_phases([40.0] * 3), requests=reqs)], config)["traffic"]
    assert traffic["achieved_qps"] == pytest.approx(2.0)
