"""Device identity and configuration: who each reading is from, how the GPU was set up, counters read first."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from lem.measure.energy import EnergyMeter
from lem.measure.energy.nvml import CLOCK_LOWERING_REASONS, NvmlSource, reason_names
from lem.measure.energy.sampler import PowerSampler
from lem.measure.energy.sources import Channel, Key, Sample, Source
from tests.measure.energy_fakes import FakeClock, fake_pynvml

UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-cccc3333-0000"]
KEY0, KEY1 = ("cuda:0", "gpu"), ("cuda:1", "gpu")


def open_nvml(monkeypatch: pytest.MonkeyPatch, gpus: list[dict[str, Any]], indices: list[int], env: dict[str, str] | None = None) -> tuple[Any, NvmlSource]:
    nvml = fake_pynvml(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    src = NvmlSource(indices, env={} if env is None else env)
    src.open()
    return nvml, src


# --- identity ------------------------------------------------------------------------------


def test_describe_names_the_physical_device_and_its_config():
    ch = Channel("cpu-package-0", "cpu", "rapl", name="package-0", identity="/sys/class/powercap/intel-rapl:0")
    assert ch.describe()["device_id"] == "/sys/class/powercap/intel-rapl:0"
    assert ch.describe()["config"] is None
    assert Channel("cpu", "cpu", "estimated").describe()["device_id"] is None  # no identity: null, not ""


def test_meter_record_lists_each_gpu_by_uuid_with_its_config(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([{"uuid": u} for u in UUIDS]))
    m = EnergyMeter([NvmlSource([0, 1], env={"CUDA_VISIBLE_DEVICES": "2,0"})], clock=FakeClock()).start(background=False)
    channels = {c["device"]: c for c in m.record().channels}
    assert channels["cuda:0"]["device_id"] == UUIDS[2] and channels["cuda:1"]["device_id"] == UUIDS[0]
    assert channels["cuda:0"]["config"]["enforced_power_limit_w"] == 700.0


# --- configuration -------------------------------------------------------------------------


def test_gpu_config_as_nvml_reports_it(monkeypatch):
    _, src = open_nvml(monkeypatch, [{"uuid": UUIDS[0], "config": {"enforced_power_limit_mw": 450_000, "pstate": 2}}], [0])
    cfg = src.channels[0].config
    assert cfg == {
        "driver_version": "550.54.15",
        "nvml_version": "12.550.54.15",
        "cuda_driver_version": "12.4",
        "enforced_power_limit_w": 450.0,
        "power_limit_w": 700.0,
        "default_power_limit_w": 700.0,
        "power_limit_range_w": [200.0, 700.0],
        "persistence_mode": True,
        "applications_clocks_mhz": {"sm": 1755, "mem": 2619},
        "default_applications_clocks_mhz": {"sm": 1755, "mem": 2619},
        "max_clocks_mhz": {"sm": 1980, "mem": 2619},
        "clock_offsets_mhz": {"sm": 0, "mem": 0},
        "pstate": "P2",
        "mig_mode": {"current": "disabled", "pending": "disabled"},
        "compute_mode": "default",
        "ecc_enabled": True,
        "serial": "1650923012345",
        "pci_bus_id": "00000000:18:00.0",
    }


def test_unsupported_or_missing_calls_are_null_never_guessed(monkeypatch):
    unsupported = {"enforced_power_limit_mw": None, "persistence_mode": None, "applications_clocks_mhz": None, "pstate": 32, "ecc_mode": None}
    nvml = fake_pynvml([{"uuid": UUIDS[0], "config": unsupported}])
    del nvml.nvmlDeviceGetMigMode  # an older binding without the call
    del nvml.nvmlSystemGetCudaDriverVersion_v2  # falls back to the v1 call
    nvml.system["driver"] = None
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    src = NvmlSource([0], env={})
    src.open()
    cfg = src.channels[0].config
    for key in ("enforced_power_limit_w", "persistence_mode", "applications_clocks_mhz", "pstate", "mig_mode", "ecc_enabled", "driver_version"):
        assert cfg[key] is None, key
    assert cfg["cuda_driver_version"] == "12.4" and cfg["power_limit_w"] == 700.0
    assert src.channels[0].counter_source == "counter"  # a missing config call costs nothing else


def test_a_power_cap_changed_during_the_run_is_said(monkeypatch):
    nvml, src = open_nvml(monkeypatch, [{"uuid": UUIDS[0]}], [0])
    assert src.config_changes() == []
    nvml.handles[0].config["enforced_power_limit_mw"] = 400_000
    nvml.handles[0].config["pstate"] = 8  # follows the load: not a change of setup
    (warning,) = src.config_changes()
    assert "cuda:0" in warning and "enforced_power_limit_w" in warning and "700.0 -> 400.0" in warning


# --- throttle reasons ----------------------------------------------------------------------


def test_board_limit_and_reliability_are_named_and_count_as_lowered_clocks():
    assert reason_names(0x200 | 0x400) == ["board_limit", "reliability"]
    assert {"board_limit", "reliability", "sw_power_cap", "hw_slowdown"} <= CLOCK_LOWERING_REASONS
    assert not {"gpu_idle", "applications_clocks_setting", "display_clock_setting"} & CLOCK_LOWERING_REASONS
    assert reason_names(0x4 | 0x800) == ["sw_power_cap", "0x800"]  # a bit NVML does not define stays hex


# --- counters first at a boundary ----------------------------------------------------------


class LoggingSource(Source):
    """A source whose telemetry reads take time; logs every call."""

    def __init__(self, name: str, clock: FakeClock, log: list[tuple[str, str, float]]) -> None:
        super().__init__()
        self.name, self.clock, self.log = name, clock, log
        self.channels = [Channel(name, "gpu", "counter", "instant", identity=f"id-{name}")]

    def read_energy_j(self) -> dict[Key, float | None]:
        self.log.append((self.name, "counter", self.clock()))
        return {self.channels[0].key: 1.0}

    def sample(self) -> dict[Key, Sample]:
        self.log.append((self.name, "sample", self.clock()))
        self.clock.sleep(0.004)  # telemetry: several driver calls
        return {self.channels[0].key: Sample(power_w=100.0)}

    def processes(self) -> dict[Key, list[int]]:
        self.log.append((self.name, "processes", self.clock()))
        self.clock.sleep(0.002)
        return {}


def test_boundary_reads_every_counter_before_any_telemetry_and_stamps_the_counter_time():
    clock, log = FakeClock(100.0), []
    sampler = PowerSampler(0.1, clock)
    sampler.open([LoggingSource("a", clock, log), LoggingSource("b", clock, log)], [], [])
    snap = sampler.read(force_counters=True)
    assert [(name, what) for name, what, _ in log] == [
        ("a", "counter"), ("b", "counter"), ("a", "sample"), ("a", "processes"), ("b", "sample"), ("b", "processes")
    ]
    assert snap.t == pytest.approx(100.0)  # the counters' time, not shifted by the 12 ms of telemetry after them
    assert snap.energy == {("a", "gpu"): 1.0, ("b", "gpu"): 1.0}


# --- NVML <-> torch mapping, re-verified once CUDA is up --------------------------------------


def test_verify_mapping_remaps_a_swapped_gpu_and_keeps_its_energy_continuous(monkeypatch):
    # CUDA_VISIBLE_DEVICES says cuda:0 = NVML 0; torch (once CUDA is up) says cuda:0 is bbbb and cuda:1 is aaaa.
    nvml, src = open_nvml(monkeypatch, [{"uuid": UUIDS[0], "name": "NVIDIA A100"}, {"uuid": UUIDS[1], "name": "NVIDIA H100"}], [0, 1], {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert [c.identity for c in src.channels] == [UUIDS[0], UUIDS[1]]
    nvml.handles[0].energy_mj += 3000  # 3 J on NVML 0 before the check
    warnings = src.verify_mapping({0: "bbbb2222-0000", 1: "aaaa1111-0000"})
    assert len(warnings) == 2
    assert "cuda:0" in warnings[0] and UUIDS[0] in warnings[0] and "bbbb2222-0000" in warnings[0] and "wrong GPU" in warnings[0]
    ch0, ch1 = src.channels
    assert (ch0.key, ch0.identity, ch0.name) == (KEY0, UUIDS[1], "NVIDIA H100")
    assert (ch1.key, ch1.identity, ch1.name) == (KEY1, UUIDS[0], "NVIDIA A100")
    assert ch0.notes[0].startswith(f"NVML {UUIDS[1]} via torch device UUID") and any("remapped from" in n for n in ch0.notes)
    assert src.read_energy_j()[KEY0] == pytest.approx(3.0)  # continues from what was read, no jump
    nvml.handles[1].energy_mj += 2000  # cuda:0 is now read from NVML 1
    assert src.read_energy_j() == {KEY0: pytest.approx(5.0), KEY1: pytest.approx(0.0)}
    assert src.verify_mapping({0: "bbbb2222-0000", 1: "aaaa1111-0000"}) == []  # consistent now


def test_verify_mapping_is_quiet_when_consistent_or_cuda_is_not_up(monkeypatch):
    _, src = open_nvml(monkeypatch, [{"uuid": u} for u in UUIDS], [0, 1])
    assert src.verify_mapping({0: "aaaa1111-0000", 1: "GPU-bbbb2222-0000"}) == []
    monkeypatch.setitem(sys.modules, "torch", None)  # torch not imported: CUDA not initialised
    assert src.verify_mapping() == []
    assert [c.identity for c in src.channels] == UUIDS[:2]


def test_verify_mapping_warns_without_remapping_when_nvml_does_not_know_the_uuid_or_it_is_taken(monkeypatch):
    _, src = open_nvml(monkeypatch, [{"uuid": u} for u in UUIDS], [0, 1])
    (unknown,) = src.verify_mapping({0: "ffff9999-0000"})
    assert "cuda:0" in unknown and "does not list" in unknown and src.channels[0].identity == UUIDS[0]
    (taken,) = src.verify_mapping({0: "bbbb2222-0000", 1: "bbbb2222-0000"})
    assert "cuda:0" in taken and "counted twice" in taken
    assert [c.identity for c in src.channels] == UUIDS[:2]


def test_verify_mapping_accepts_a_mig_instance_by_its_own_uuid(monkeypatch):
    _, src = open_nvml(monkeypatch, [{"uuid": UUIDS[0], "migs": ["MIG-1111-aaaa"]}], [0], {"CUDA_VISIBLE_DEVICES": "MIG-1111"})
    assert src.verify_mapping({0: "1111-aaaa"}) == []
