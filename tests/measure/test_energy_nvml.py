"""NVML through a fake pynvml module: CUDA index -> NVML handle mapping, counter, instant power, fallbacks."""

from __future__ import annotations

import sys

import pytest

from lem.errors import LemError
from lem.measure.energy import EnergyMeter
from lem.measure.energy.nvml import NvmlSource, reason_names, resolve_gpus
from tests.measure.energy_fakes import FakeClock, fake_pynvml

UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-cccc3333-0000", "GPU-dddd4444-0000"]


def nvml4(**extra):
    return fake_pynvml([{"uuid": u, **extra} for u in UUIDS])


def mapped(nvml, indices, cvd=None, **kw):
    env = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    targets, warnings = resolve_gpus(nvml, indices, env, **kw)
    return [t.uuid for t in targets], warnings


def test_unset_visible_devices_maps_index_to_index():
    assert mapped(nvml4(), [0, 3])[0] == [UUIDS[0], UUIDS[3]]


def test_visible_devices_as_indices_renumber_from_zero():
    # CUDA_VISIBLE_DEVICES=2,0: cuda:0 is NVML 2, cuda:1 is NVML 0.
    assert mapped(nvml4(), [0, 1], "2,0")[0] == [UUIDS[2], UUIDS[0]]


def test_visible_devices_as_uuids_and_uuid_prefixes():
    assert mapped(nvml4(), [0, 1], "GPU-dddd4444-0000,GPU-bbbb")[0] == [UUIDS[3], UUIDS[1]]
    assert mapped(nvml4(), [0], "cccc3333")[0] == [UUIDS[2]]  # bare UUID prefix, as CUDA accepts


def test_invalid_entry_hides_it_and_everything_after_it():
    nvml = nvml4()
    assert mapped(nvml, [0], "1,7,2")[0] == [UUIDS[1]]
    with pytest.raises(LemError, match=r"CUDA device 1 has no NVML device: CUDA_VISIBLE_DEVICES=1,7,2 makes 1 device\(s\) visible out of 4"):
        mapped(nvml, [1], "1,7,2")
    with pytest.raises(LemError):
        mapped(nvml, [0], "GPU-")  # ambiguous prefix matches every GPU: invalid


def test_mig_instance_maps_to_its_parent_gpu_with_a_warning():
    nvml = fake_pynvml([{"uuid": UUIDS[0]}, {"uuid": UUIDS[1], "migs": ["MIG-1111-aaaa", "MIG-2222-bbbb"]}])
    uuids, warnings = mapped(nvml, [0], "MIG-2222")
    assert uuids == [UUIDS[1]]
    assert any("MIG instance MIG-2222-bbbb" in w and "whole GPU" in w for w in warnings)


def test_torch_uuid_wins_over_the_environment():
    # torch says cuda:0 is the GPU whose UUID is bbbb...; the variable would have said NVML 0.
    uuids, _ = mapped(nvml4(), [0], None, torch_uuids={0: "bbbb2222-0000"})
    assert uuids == [UUIDS[1]]


def test_mixed_models_without_pci_order_warn():
    nvml = fake_pynvml([{"uuid": UUIDS[0], "name": "NVIDIA H100"}, {"uuid": UUIDS[1], "name": "NVIDIA A10"}])
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in w for w in mapped(nvml, [0])[1])
    _, quiet = resolve_gpus(nvml, [0], {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert quiet == []


def test_source_reads_counter_instant_power_and_telemetry(monkeypatch):
    nvml = nvml4()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    src = NvmlSource([0], env={"CUDA_VISIBLE_DEVICES": "3"})
    src.open()
    (ch,) = src.channels
    assert (ch.device, ch.counter_source, ch.power_kind, ch.identity) == ("cuda:0", "counter", "instant", UUIDS[3])
    nvml.handles[3].energy_mj += 2500  # 2.5 J since open
    assert src.read_energy_j() == {("cuda:0", "gpu"): pytest.approx(2.5)}
    s = src.sample()[("cuda:0", "gpu")]
    assert s.power_w == pytest.approx(100.0) and (s.sm_util_pct, s.sm_clock_mhz, s.temp_c) == (80.0, 1980.0, 55.0)
    nvml.handles[3].pids = [4242]
    assert src.processes() == {("cuda:0", "gpu"): [4242]}


def test_no_instant_field_falls_back_to_power_usage_and_no_counter_to_sampled(monkeypatch):
    nvml = fake_pynvml([{"uuid": UUIDS[0], "energy_mj": None, "instant_mw": None, "usage_mw": 80_000}])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    clock = FakeClock()
    m = EnergyMeter([NvmlSource([0], env={})], clock=clock, sleep=clock.sleep).start(background=False)
    (ch,) = m.channels
    assert ch.counter_source is None and ch.power_kind == "power_usage"
    m.begin_window("w")
    for _ in range(10):
        clock.sleep(0.1)
        m.tick()
    r = m.end_window("w", synchronize=lambda: None).reading("cuda:0")
    assert (r.source, r.energy_j) == ("sampled", pytest.approx(80.0))
    assert any("1 s average" in n for n in ch.notes)


def test_meter_without_pynvml_or_driver_keeps_going(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails like an uninstalled package
    m = EnergyMeter([NvmlSource([0])]).start(background=False)
    assert m.channels == [] and any("nvidia-ml-py" in n for n in m.notes)


def test_reason_names():
    assert reason_names(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert reason_names(0) == [] and reason_names(None) == []
    assert reason_names(0x10000) == ["0x10000"]
