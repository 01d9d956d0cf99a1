"""The idle baseline in one defined state: power settled first, the state and device settings in the cache key,
its uncertainty carried into net figures, and drift re-measured after generation (fake sources, fake clock)."""

from __future__ import annotations

import math

import pytest

from lem.measure.energy import EnergyMeter
from lem.measure.energy.baseline import fingerprint
from lem.measure.energy.sources import Source
from tests.measure.energy_fakes import FakeClock, FakeDevice, run_for, swinging_power


def meter_with(clock: FakeClock, *sources: Source, **kw) -> EnergyMeter:
    m = EnergyMeter(list(sources), clock=clock, sleep=clock.sleep, t0=clock.t, **kw)
    return m.start(background=False)


def decaying(clock: FakeClock, gpu: FakeDevice, start_w: float, idle_w: float, tau_s: float) -> None:
    """The GPU's power falls exponentially from start_w to idle_w (a device cooling down after loading a model)."""
    t0 = clock.t

    def update(dt: float) -> None:
        gpu.power_w = idle_w + (start_w - idle_w) * math.exp(-(clock.t + dt - t0) / tau_s)

    clock.listeners.insert(0, update)


def test_idle_waits_for_power_to_settle_after_model_load():
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=300.0)
    m = meter_with(clock, gpu, sample_interval_s=0.1, idle_settle_max_s=60.0)
    decaying(clock, gpu, 300.0, 100.0, tau_s=2.0)
    base = m.measure_idle(5.0)
    (idle,) = base.power
    assert base.settled is True and 5.0 < base.settle_s < 60.0
    assert idle.mean_power_w == pytest.approx(100.0, rel=0.05)  # the idle device, not the tail of the load (> 130 W)
    assert base.state == "model_loaded" and base.when == "before_warmup"


def test_without_settling_the_same_device_reads_the_tail_as_idle():
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=300.0)
    m = meter_with(clock, gpu, sample_interval_s=0.1, idle_settle_max_s=0.0)
    decaying(clock, gpu, 300.0, 100.0, tau_s=2.0)
    (idle,) = m.measure_idle(5.0).power
    assert idle.mean_power_w > 130.0  # what lem measured before: the decay, counted as idle


def test_power_that_never_settles_is_said():
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=100.0)
    m = meter_with(clock, gpu, sample_interval_s=0.1, idle_settle_max_s=5.0)
    with swinging_power(clock, gpu, 100.0, 200.0, every=10):  # 100 W and 200 W in alternate seconds
        base = m.measure_idle(2.0)
    assert base.settled is False and base.settle_s <= 5.0 + 1e-9
    assert any("had not settled" in w for w in m.warnings())


def test_estimated_power_is_not_settled_on():
    clock = FakeClock()
    cpu = FakeDevice(clock, device="cpu", component="cpu", counter_source="estimated", power_kind=None, power_w=20.0)
    m = meter_with(clock, cpu, sample_interval_s=0.1, idle_settle_max_s=30.0)
    base = m.measure_idle(1.0)
    assert base.settled is None and base.settle_s == 0.0  # a model's figure says nothing about the hardware's state


def test_cache_key_holds_state_driver_and_power_limit():
    channel = {"device": "cuda:0", "component": "gpu", "source": "counter", "identity": "GPU-1"}
    at_700 = fingerprint([{**channel, "config": {"driver_version": "550.54", "enforced_power_limit_w": 700.0}}])
    at_400 = fingerprint([{**channel, "config": {"driver_version": "550.54", "enforced_power_limit_w": 400.0}}])
    new_driver = fingerprint([{**channel, "config": {"driver_version": "560.28", "enforced_power_limit_w": 700.0}}])
    other_state = fingerprint([{**channel, "config": {"driver_version": "550.54", "enforced_power_limit_w": 700.0}}], state="no_context")
    assert len({at_700, at_400, new_driver, other_state}) == 4


def test_cached_baseline_not_reused_after_a_power_limit_change(tmp_path):
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=80.0)
    gpu.channel.config = {"driver_version": "550.54", "enforced_power_limit_w": 700.0}
    m = meter_with(clock, gpu, cache_dir=tmp_path, idle_baseline_cache_max_age_s=3600)
    assert not m.measure_idle(1.0).cached
    assert m.measure_idle(1.0).cached  # same state, same settings: reused
    gpu.channel.config = {"driver_version": "550.54", "enforced_power_limit_w": 400.0}
    again = m.measure_idle(1.0)
    assert not again.cached and again.device_config == {"cuda:0": {"driver_version": "550.54", "enforced_power_limit_w": 400.0}}


def test_net_energy_carries_the_idle_standard_error():
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=50.0)
    m = meter_with(clock, gpu, sample_interval_s=0.5)
    with swinging_power(clock, gpu, 49.0, 51.0):
        (idle,) = m.measure_idle(10.0).power
    gpu.power_w = 150.0
    m.begin_window("generation")
    run_for(m, clock, 20.0)
    r = m.end_window("generation", synchronize=lambda: None).reading("cuda:0")
    expected = idle.std_power_w / math.sqrt(idle.n_samples) * 20.0
    assert r.net_energy_uncertainty_j == pytest.approx(expected) and r.net_energy_uncertainty_j > 0
    assert r.device_id == "fake:cuda:0"


def test_idle_rechecked_after_generation_reports_drift_without_changing_net():
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=100.0)
    m = meter_with(clock, gpu, sample_interval_s=0.1)
    m.measure_idle(2.0)
    gpu.power_w = 300.0
    m.begin_window("generation")
    run_for(m, clock, 5.0)
    w = m.end_window("generation", synchronize=lambda: None)
    gpu.power_w = 130.0  # idle 30 % higher afterwards (a warmer device)
    after = m.recheck_idle(2.0)
    assert after.when == "after_generation" and after.power[0].mean_power_w == pytest.approx(130.0)
    assert m.baseline.power[0].mean_power_w == pytest.approx(100.0)  # the baseline applied is unchanged
    assert w.reading("cuda:0").net_energy_j == pytest.approx(1500.0 - 500.0)
    assert any("drifted from 100 W" in x and "+30.0%" in x for x in m.warnings())
