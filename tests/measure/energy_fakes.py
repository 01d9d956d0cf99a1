"""Fakes at the energy layer's import boundaries: a controllable clock, energy sources, a pynvml module, a powercap tree."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lem.measure.energy.sources import Channel, Key, Sample, Source


class FakeClock:
    """Time that moves only when told; devices integrate their power as it moves."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.listeners: list[Callable[[float], None]] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        for listen in self.listeners:
            listen(dt)
        self.t += dt


class FakeDevice(Source):
    """One channel drawing ``power_w`` (settable, or a function of the sample count); exact energy counter."""

    name = "fake"

    def __init__(
        self,
        clock: FakeClock,
        device: str = "cuda:0",
        component: str = "gpu",
        counter_source: str | None = "counter",
        power_kind: str | None = "instant",
        power_w: float = 100.0,
        telemetry: bool = False,
        counter_interval_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.has_telemetry = telemetry
        self.counter_interval_s = counter_interval_s
        self.channel = Channel(device, component, counter_source, power_kind, name=f"fake {device}", identity=f"fake:{device}")
        self.power_w = power_w
        self.energy_j = 0.0
        self.throttle_reasons = 0
        self.pids: list[int] = []
        self.counter_reads = 0
        clock.listeners.append(self._advance)

    def _advance(self, dt: float) -> None:
        self.energy_j += self.power_w * dt

    def open(self) -> None:
        self.channels = [self.channel]

    def read_energy_j(self) -> dict[Key, float | None]:
        self.counter_reads += 1
        return {self.channel.key: self.energy_j} if self.channel.counter_source else {}

    def sample(self) -> dict[Key, Sample]:
        if self.channel.power_kind is None and not self.has_telemetry:
            return {}
        s = Sample(power_w=self.power_w if self.channel.power_kind else None)
        if self.has_telemetry:
            s.sm_util_pct, s.mem_util_pct, s.sm_clock_mhz, s.temp_c = 90.0, 40.0, 1980.0, 60.0
            s.throttle_reasons = self.throttle_reasons
        return {self.channel.key: s}

    def processes(self) -> dict[Key, list[int]]:
        return {self.channel.key: list(self.pids)} if self.has_telemetry else {}


@contextmanager
def swinging_power(clock: FakeClock, device: FakeDevice, low_w: float, high_w: float, every: int = 1) -> Iterator[None]:
    """While open, ``device`` draws ``low_w`` and ``high_w`` in turn, switching every ``every`` clock steps."""
    steps = {"n": 0}

    def swing(dt: float) -> None:
        steps["n"] += 1
        device.power_w = low_w if (steps["n"] // every) % 2 else high_w

    clock.listeners.insert(0, swing)
    try:
        yield
    finally:
        clock.listeners.remove(swing)


def run_for(meter: Any, clock: FakeClock, seconds: float, step: float | None = None) -> None:
    """Advance fake time by ``seconds``, ticking the meter's sampler every ``step`` (its interval)."""
    step = step or meter.sample_interval_s
    n = round(seconds / step)
    for _ in range(n):
        clock.sleep(step)
        meter.tick()


# --- a fake pynvml --------------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


class _Handle:
    def __init__(self, index: int, uuid: str, name: str, energy_mj: int | None, instant_mw: int | None, usage_mw: int | None, migs: list[str]) -> None:
        self.index, self.uuid, self.name = index, uuid, name
        self.energy_mj, self.instant_mw, self.usage_mw = energy_mj, instant_mw, usage_mw
        self.migs = [_Mig(m, self) for m in migs]
        self.pids: list[int] = []
        self.reasons = 0
        self.config: dict[str, Any] = dict(GPU_CONFIG)


# What the fake NVML reports about each GPU's configuration (an H100 SXM); None: "Not Supported".
GPU_CONFIG: dict[str, Any] = {
    "enforced_power_limit_mw": 700_000,
    "power_limit_mw": 700_000,
    "default_power_limit_mw": 700_000,
    "power_limit_constraints_mw": [200_000, 700_000],
    "persistence_mode": 1,
    "applications_clocks_mhz": {1: 1755, 2: 2619},
    "default_applications_clocks_mhz": {1: 1755, 2: 2619},
    "max_clocks_mhz": {1: 1980, 2: 2619},
    "gpc_clk_vf_offset_mhz": 0,
    "mem_clk_vf_offset_mhz": 0,
    "pstate": 0,
    "mig_mode": [0, 0],
    "compute_mode": 0,
    "ecc_mode": [1, 1],
    "serial": "1650923012345",
    "pci_bus_id": b"00000000:18:00.0",
}


class _Mig:
    def __init__(self, uuid: str, parent: _Handle) -> None:
        self.uuid, self.parent = uuid, parent


def fake_pynvml(gpus: list[dict[str, Any]]) -> types.ModuleType:
    """A module object with the pynvml functions lem calls; each GPU: uuid, name, energy_mj, instant_mw, usage_mw, migs,
    config (overrides of ``GPU_CONFIG``; None makes that call raise "Not Supported")."""
    handles = [
        _Handle(i, g["uuid"], g.get("name", "NVIDIA H100"), g.get("energy_mj", 1_000_000), g.get("instant_mw", 100_000), g.get("usage_mw", 99_000), g.get("migs", []))
        for i, g in enumerate(gpus)
    ]
    for h, g in zip(handles, gpus, strict=True):
        h.config.update(g.get("config", {}))
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    m.NVML_FI_DEV_POWER_INSTANT = 186
    m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM, m.NVML_TEMPERATURE_GPU = 1, 2, 0
    m.handles = handles
    m.init_calls = 0

    def need(value: Any) -> Any:
        if value is None:
            raise FakeNVMLError("Not Supported")
        return value

    def init() -> None:
        m.init_calls += 1

    def field_values(h: _Handle, ids: list[int]) -> list[Any]:
        ok = h.instant_mw is not None
        value = types.SimpleNamespace(uiVal=h.instant_mw or 0, dVal=0.0)
        return [types.SimpleNamespace(fieldId=i, nvmlReturn=0 if ok else 3, valueType=1, value=value) for i in ids]

    def mig_by_index(h: _Handle, j: int) -> _Mig:
        if j >= len(h.migs):
            raise FakeNVMLError("Not Found")
        return h.migs[j]

    m.nvmlInit = init
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: len(handles)
    m.nvmlDeviceGetHandleByIndex = lambda i: handles[i]
    m.nvmlDeviceGetUUID = lambda h: h.uuid
    m.nvmlDeviceGetName = lambda h: h.name
    m.nvmlDeviceGetTotalEnergyConsumption = lambda h: need(h.energy_mj)
    m.nvmlDeviceGetFieldValues = field_values
    m.nvmlDeviceGetPowerUsage = lambda h: need(h.usage_mw)
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=80, memory=30)
    m.nvmlDeviceGetClockInfo = lambda h, kind: 1980 if kind == 1 else 2619
    m.nvmlDeviceGetTemperature = lambda h, sensor: 55
    m.nvmlDeviceGetCurrentClocksEventReasons = lambda h: h.reasons
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: [types.SimpleNamespace(pid=p) for p in h.pids]
    m.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []
    m.nvmlDeviceGetMaxMigDeviceCount = lambda h: 7 if h.migs else 0
    m.nvmlDeviceGetMigDeviceHandleByIndex = mig_by_index
    # configuration
    m.system = {"driver": "550.54.15", "nvml": "12.550.54.15", "cuda": 12040}
    m.nvmlSystemGetDriverVersion = lambda: need(m.system["driver"])
    m.nvmlSystemGetNVMLVersion = lambda: need(m.system["nvml"])
    m.nvmlSystemGetCudaDriverVersion_v2 = lambda: need(m.system["cuda"])
    m.nvmlSystemGetCudaDriverVersion = lambda: need(m.system["cuda"])
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: need(h.config["enforced_power_limit_mw"])
    m.nvmlDeviceGetPowerManagementLimit = lambda h: need(h.config["power_limit_mw"])
    m.nvmlDeviceGetPowerManagementDefaultLimit = lambda h: need(h.config["default_power_limit_mw"])
    m.nvmlDeviceGetPowerManagementLimitConstraints = lambda h: list(need(h.config["power_limit_constraints_mw"]))
    m.nvmlDeviceGetPersistenceMode = lambda h: need(h.config["persistence_mode"])
    m.nvmlDeviceGetApplicationsClock = lambda h, kind: need((h.config["applications_clocks_mhz"] or {}).get(kind))
    m.nvmlDeviceGetDefaultApplicationsClock = lambda h, kind: need((h.config["default_applications_clocks_mhz"] or {}).get(kind))
    m.nvmlDeviceGetMaxClockInfo = lambda h, kind: need((h.config["max_clocks_mhz"] or {}).get(kind))
    m.nvmlDeviceGetGpcClkVfOffset = lambda h: need(h.config["gpc_clk_vf_offset_mhz"])
    m.nvmlDeviceGetMemClkVfOffset = lambda h: need(h.config["mem_clk_vf_offset_mhz"])
    m.nvmlDeviceGetPerformanceState = lambda h: need(h.config["pstate"])
    m.nvmlDeviceGetMigMode = lambda h: list(need(h.config["mig_mode"]))
    m.nvmlDeviceGetComputeMode = lambda h: need(h.config["compute_mode"])
    m.nvmlDeviceGetEccMode = lambda h: list(need(h.config["ecc_mode"]))
    m.nvmlDeviceGetSerial = lambda h: need(h.config["serial"])
    m.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=need(h.config["pci_bus_id"]))
    return m


# --- a fake powercap tree --------------------------------------------------------------------


def write_zone(root: Path, name: str, label: str, energy_uj: int, max_uj: int = 262_143_328_850) -> Path:
    """One RAPL zone as the kernel lays it out (flat under /sys/class/powercap)."""
    zone = root / name
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone
