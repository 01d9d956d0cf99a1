"""The window API against fake sources and a fake clock: sources, nulls, baselines, nesting, timeline, warnings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lem.errors import LemError
from lem.measure.energy import EnergyMeter
from lem.measure.energy.sources import Source
from lem.results.writer import encode_record
from tests.measure.energy_fakes import FakeClock, FakeDevice, run_for, swinging_power


def meter_with(clock: FakeClock, *sources: Source, **kw) -> EnergyMeter:
    m = EnergyMeter(list(sources), clock=clock, sleep=clock.sleep, t0=clock.t, **kw)
    return m.start(background=False)


def test_counter_energy_per_window_with_cross_check():
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=200.0)
    m = meter_with(clock, gpu)
    run_for(m, clock, 1.0)
    m.begin_window("generation")
    run_for(m, clock, 10.0)
    w = m.end_window("generation", synchronize=lambda: None)
    r = w.reading("cuda:0")
    assert w.duration_s == pytest.approx(10.0) and w.start_s == pytest.approx(1.0)
    assert (r.energy_j, r.source) == (pytest.approx(2000.0), "counter")
    assert r.sampled_energy_j == pytest.approx(2000.0)  # the cross-check beside the counter
    assert r.n_samples == 103  # 101 ticks at 1.0 .. 11.0 s (fake time: two coincide with the boundaries) + 2 boundary reads
    assert r.net_energy_j is None and r.idle_power_w is None  # no baseline: net is unknown, not gross


def test_no_counter_falls_back_to_integrated_samples():
    clock = FakeClock()
    gpu = FakeDevice(clock, counter_source=None, power_w=150.0)
    m = meter_with(clock, gpu)
    m.begin_window("w")
    run_for(m, clock, 4.0)
    gpu.power_w = 250.0  # a step: the sampled integral is within one interval of the truth
    run_for(m, clock, 4.0)
    r = m.end_window("w", synchronize=lambda: None).reading("cuda:0")
    assert r.source == "sampled"
    assert r.energy_j == pytest.approx(150 * 4 + 250 * 4, abs=100 * 0.1)
    assert any("no energy counter" in w for w in m.warnings())


def test_nothing_measured_is_null_never_zero():
    clock = FakeClock()
    blind = FakeDevice(clock, counter_source=None, power_kind=None)
    m = meter_with(clock, blind)
    m.begin_window("w")
    run_for(m, clock, 2.0)
    r = m.end_window("w", synchronize=lambda: None).reading("cuda:0")
    assert r.energy_j is None and r.source is None and r.net_energy_j is None and r.sampled_energy_j is None

    empty = meter_with(FakeClock())
    empty.begin_window("w")
    assert empty.end_window("w").readings == []
    assert any(w.startswith("no energy source available") for w in empty.warnings())


def test_idle_baseline_mean_spread_and_net():
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=50.0)
    m = meter_with(clock, gpu, sample_interval_s=0.5)
    # Idle power alternates 49 / 51 W between samples: mean 50, spread ~1 W.
    with swinging_power(clock, gpu, 49.0, 51.0):
        base = m.measure_idle(10.0)
    (idle,) = base.power
    assert not base.cached and base.duration_s == pytest.approx(10.0)
    assert idle.mean_power_w == pytest.approx(50.0, abs=0.1) and idle.source == "counter"
    assert idle.std_power_w == pytest.approx(1.0, abs=0.1) and idle.n_samples == 23  # 21 ticks + 2 boundary reads

    gpu.power_w = 150.0
    m.begin_window("generation")
    run_for(m, clock, 10.0)
    r = m.end_window("generation", synchronize=lambda: None).reading("cuda:0")
    assert r.energy_j == pytest.approx(1500.0)
    assert r.net_energy_j == pytest.approx(1500.0 - idle.mean_power_w * 10.0)
    assert (r.idle_power_w, r.idle_power_std_w) == (idle.mean_power_w, idle.std_power_w)
    assert "idle_baseline" not in [w.split()[0] for w in m.warnings()]  # the idle window is not a phase


def test_zero_seconds_disables_the_baseline():
    clock = FakeClock()
    m = meter_with(clock, FakeDevice(clock))
    assert m.measure_idle(0) is None and m.baseline is None


def test_nested_windows_and_phases_that_add_up_to_the_run():
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=100.0)
    m = meter_with(clock, gpu)
    m.begin_window("run")
    m.begin_window("engine_init")
    run_for(m, clock, 1.0)
    init = m.end_window("engine_init", synchronize=lambda: None, begin_next="model_load")
    gpu.power_w = 300.0
    run_for(m, clock, 2.0)
    load = m.end_window("model_load", synchronize=lambda: None)
    run_for(m, clock, 1.0)  # a gap: work between phases
    m.begin_window("generation")
    gpu.power_w = 500.0
    run_for(m, clock, 6.0)
    gen = m.end_window("generation", synchronize=lambda: None)
    run = m.end_window("run", synchronize=lambda: None)
    e = {w.name: w.reading("cuda:0").energy_j for w in (init, load, gen, run)}
    assert e["engine_init"] + e["model_load"] == pytest.approx(100 + 600)  # shared boundary: exact
    assert e["run"] == pytest.approx(100 + 600 + 300 + 3000)
    assert e["run"] - (e["engine_init"] + e["model_load"] + e["generation"]) == pytest.approx(300.0)  # the gap, not lost


def test_window_misuse_says_what_to_do():
    clock = FakeClock()
    m = EnergyMeter([FakeDevice(clock)], clock=clock, sleep=clock.sleep)
    with pytest.raises(LemError, match="not started"):
        m.begin_window("w")
    m.start(background=False)
    m.begin_window("w")
    with pytest.raises(LemError, match="already open"):
        m.begin_window("w")
    with pytest.raises(LemError, match="never begun"):
        m.end_window("other")


def test_context_manager_window_is_filled_on_exit():
    clock = FakeClock()
    m = meter_with(clock, FakeDevice(clock, power_w=10.0))
    with m.window("w", synchronize=lambda: None) as w:
        run_for(m, clock, 3.0)
    assert w.duration_s == pytest.approx(3.0) and w.reading("cuda:0").energy_j == pytest.approx(30.0)


def test_synchronize_runs_before_the_closing_read():
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=100.0)
    m = meter_with(clock, gpu)
    m.begin_window("w")
    # Queued device work finishes inside synchronize(): its 2 s must be in the window.
    w = m.end_window("w", synchronize=lambda: clock.sleep(2.0))
    assert w.duration_s == pytest.approx(2.0) and w.reading("cuda:0").energy_j == pytest.approx(200.0)


def test_timeline_rows_records_and_telemetry_warnings():
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=100.0, telemetry=True)
    cpu = FakeDevice(clock, device="cpu-package-0", component="cpu", counter_source="rapl", power_kind=None, power_w=40.0)
    m = meter_with(clock, gpu, cpu)
    m.begin_window("generation")
    run_for(m, clock, 1.0)
    gpu.throttle_reasons = 0x4 | 0x1  # sw power cap (+ idle, which is not throttling)
    gpu.pids = [__import__("os").getpid(), 999_999]
    run_for(m, clock, 6.0)
    w = m.end_window("generation", synchronize=lambda: None)
    r = w.reading("cuda:0")
    assert r.throttle_reasons == ["gpu_idle", "sw_power_cap"] and r.other_pids == [999_999]
    assert w.reading("cpu-package-0").throttle_reasons is None  # no telemetry: unknown, not "none"
    text = " ".join(m.warnings())
    assert "cuda:0 throttled (sw_power_cap)" in text and "other processes on cuda:0 (pid 999999)" in text

    rows = m.samples()
    assert rows[0].t_s == pytest.approx(0.0) and {r.device for r in rows} == {"cuda:0", "cpu-package-0"}
    cpu_rows = [r for r in rows if r.device == "cpu-package-0" and r.power_w is not None]
    assert cpu_rows and all(r.power_w == pytest.approx(40.0) for r in cpu_rows)  # power from counter deltas
    records = m.sample_records()
    assert {r.device: r.power_kind for r in records} == {"cuda:0": "instant", "cpu-package-0": "counter_delta"}
    g = next(r for r in records if r.device == "cuda:0")
    assert len(g.t_s) == len(g.power_w) == len(g.sm_util_pct) == len(g.energy_j) and g.throttle_reasons[-1] == 5
    assert next(r for r in records if r.device == "cpu-package-0").sm_util_pct is None
    json.loads(encode_record(g))  # serialisable, no NaN
    assert m.sample_records() == []  # new_only: nothing new since the last export
    run_for(m, clock, 1.0)
    assert [len(r.t_s) for r in m.sample_records()] == [10, 10]


def test_short_window_and_estimated_sources_are_warned():
    clock = FakeClock()
    est = FakeDevice(clock, device="cpu", component="cpu", counter_source="estimated", power_kind=None)
    m = meter_with(clock, est)
    m.begin_window("engine_init")
    run_for(m, clock, 0.5)
    m.end_window("engine_init", synchronize=lambda: None)
    m.begin_window("generation")
    run_for(m, clock, 30.0)
    m.end_window("generation", synchronize=lambda: None)
    w = m.warnings()
    assert any("shorter than 5 s" in x and "engine_init 0.5 s" in x and "generation" not in x for x in w)
    assert any(x.startswith("cpu energy estimated from a model") for x in w)
    assert m.record().warnings == w


def test_counter_interval_limits_background_reads_but_not_boundaries():
    clock = FakeClock()
    slow = FakeDevice(clock, device="cpu", component="cpu", counter_source="estimated", power_kind=None, counter_interval_s=1.0)
    m = meter_with(clock, slow)
    reads0 = slow.counter_reads
    run_for(m, clock, 2.0)  # 20 ticks at 0.1 s, counter due once a second
    assert slow.counter_reads - reads0 == 2
    m.begin_window("w")
    assert slow.counter_reads - reads0 == 3  # a boundary always reads


def test_cached_baseline_reused_only_when_young_and_same_devices(tmp_path: Path):
    clock = FakeClock()
    m = meter_with(clock, FakeDevice(clock, power_w=42.0), cache_dir=tmp_path)
    first = m.measure_idle(2.0, cache_max_age_s=3600)
    assert not first.cached and (tmp_path / "idle_baseline.json").exists()

    clock2 = FakeClock()
    again = meter_with(clock2, FakeDevice(clock2, power_w=99.0), cache_dir=tmp_path)
    reused = again.measure_idle(2.0, cache_max_age_s=3600)
    assert reused.cached and reused.power[0].mean_power_w == pytest.approx(42.0)
    assert clock2.t == 1000.0 + 0.0  # no time spent measuring

    stale = meter_with(FakeClock(), FakeDevice(FakeClock(), power_w=99.0), cache_dir=tmp_path)
    data = json.loads((tmp_path / "idle_baseline.json").read_text())
    for entry in data["entries"].values():
        entry["measured_unix_s"] = time.time() - 7200
    (tmp_path / "idle_baseline.json").write_text(json.dumps(data))
    assert stale.measure_idle(1.0, cache_max_age_s=3600).cached is False  # too old: measured again

    clock3 = FakeClock()
    other = meter_with(clock3, FakeDevice(clock3, device="cuda:1", power_w=7.0), cache_dir=tmp_path)
    assert other.measure_idle(1.0, cache_max_age_s=10**9).cached is False  # other devices: never reused


def test_background_sampler_runs_and_reports_its_cost():
    real = FakeDevice(FakeClock(), power_w=5.0)  # power constant; time is real here
    m = EnergyMeter([real], sample_interval_s=0.01).start()
    m.begin_window("w")
    time.sleep(0.3)
    w = m.end_window("w")
    m.stop()
    assert w.reading("cuda:0").n_samples >= 10
    rec = m.record()
    assert rec.sampler_wall_s and rec.sampler_wall_s > 0.2 and rec.sampler_cpu_s is not None
    with pytest.raises(LemError, match="stopped"):
        m.begin_window("late")
