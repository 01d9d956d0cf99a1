"""CodeCarbon for real, offline, on this CPU: an estimated figure for a busy loop, carbon intensity, no stray files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lem.measure.energy import EnergyMeter

pytest.importorskip("codecarbon")


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def test_offline_window_estimates_a_busy_loop_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # CodeCarbon's default output dir is the cwd: nothing may appear there
    run_dir = tmp_path / "run"
    meter = EnergyMeter.for_devices(
        None,
        idle_baseline_s=0.0,
        tracking_mode="process",  # this process's CPU share: robust on a shared machine
        measure_power_secs=0.5,
        rapl_root=tmp_path / "no-powercap",
        output_dir=run_dir,
    )
    meter.start()
    try:
        assert {(c.device, c.component, c.counter_source) for c in meter.channels} == {("cpu", "cpu", "estimated"), ("ram", "dram", "estimated")}
        meter.begin_window("busy")
        busy(2.0)
        hot = meter.end_window("busy")
        meter.begin_window("sleep")
        time.sleep(2.0)
        cold = meter.end_window("sleep")
    finally:
        meter.stop()
    h, c = hot.reading("cpu"), cold.reading("cpu")
    assert h.source == "estimated" and h.energy_j is not None and h.energy_j > 0
    assert h.energy_j > 3 * c.energy_j  # the estimate follows load: one busy core vs a sleeping process
    assert hot.reading("ram").source == "estimated" and hot.reading("ram").energy_j > 0
    assert meter.carbon_intensity_g_per_kwh and meter.carbon_intensity_g_per_kwh > 0
    assert "USA" in meter.carbon_intensity_source
    info = meter.record().codecarbon
    assert info["cpu_tdp_w"] and info["tdp_basis"] and info["start_s"] is not None and info["n_measurements"] >= 4
    assert any("energy estimated from a model" in w for w in meter.warnings())
    assert sorted(os.listdir(tmp_path)) == ["run"] and os.listdir(run_dir) == []


def test_carbon_intensity_override_and_regions():
    from lem.measure.energy.carbon import carbon_intensity

    usa, src = carbon_intensity("USA")
    cal, cal_src = carbon_intensity("USA", "California")
    assert usa > 0 and cal > 0 and cal != usa and "usa/california" in cal_src.lower()
    world, world_src = carbon_intensity("XXX")
    assert world > 0 and "world average" in world_src

    m = EnergyMeter.for_devices(carbon_intensity_g_per_kwh=123.0, codecarbon=False, rapl_root="/nonexistent").start(background=False)
    assert (m.carbon_intensity_g_per_kwh, m.carbon_intensity_source) == (123.0, "config: energy.carbon_intensity_g_per_kwh")
    assert m.channels == [] and any("codecarbon.enabled=false" in n for n in m.notes)


def test_disabled_energy_measures_nothing_but_still_times_windows():
    m = EnergyMeter.for_devices(enabled=False).start()
    m.begin_window("w")
    w = m.end_window("w")
    m.stop()
    assert w.readings == [] and w.duration_s >= 0 and "energy.enabled=false" in m.notes[0]
