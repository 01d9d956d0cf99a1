"""What every energy source offers the meter: channels, cumulative counters, instant samples.

A *channel* is one metered device/component (``cuda:0``/gpu, ``cpu-package-0``/cpu, …). A
*source* (NVML, RAPL, CodeCarbon) owns one or more channels and reads them together. The
meter never talks to a library directly, so tests swap a source for a fake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (device, component)


@dataclass
class Channel:
    device: str  # "cuda:0", "cpu-package-0", "dram-0", "cpu", "ram"
    component: str  # "gpu" | "cpu" | "dram" | "system"
    counter_source: str | None  # label of the cumulative counter: "counter" | "rapl" | "estimated"; None: none
    power_kind: str | None = None  # "instant" | "power_usage" when instant power can be read; None otherwise
    name: str = ""  # what it is, e.g. "NVIDIA H100 80GB HBM3", "package-0", "AMD EPYC (CodeCarbon TDP x load)"
    identity: str = ""  # stable id for the idle-baseline cache: NVML UUID, sysfs zone, CPU model + TDP
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None  # the device's configuration as its library reports it (GPUs: gpu_config)

    @property
    def key(self) -> Key:
        return (self.device, self.component)

    def describe(self) -> dict[str, Any]:
        source = self.counter_source or ("sampled" if self.power_kind else None)
        return {
            "device": self.device,
            "component": self.component,
            "source": source,
            "power_kind": self.power_kind,
            "name": self.name,
            "device_id": self.identity or None,  # proves each physical device is counted once across processes
            "config": dict(self.config) if self.config is not None else None,
            "notes": list(self.notes),
        }


@dataclass
class Sample:
    """One instantaneous reading of a channel (all optional)."""

    power_w: float | None = None
    sm_util_pct: float | None = None
    mem_util_pct: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    temp_c: float | None = None
    throttle_reasons: int | None = None  # NVML clock-event reason bit mask


class Source:
    """Base class: override what the source can do. Reads happen under the meter's lock."""

    name = "source"
    counter_interval_s = 0.0  # the background sampler reads the counters at most this often (0: every tick)
    has_telemetry = False  # GPU columns (utilisation, clocks, temperature, throttling) in the timeline

    def __init__(self) -> None:
        self.channels: list[Channel] = []
        self.notes: list[str] = []  # why something was not used; shown in the meter record

    def restrict(self, covered: set[str]) -> bool:
        """Before ``open``: the components other sources already measure. False: this source is not needed."""
        return True

    def open(self) -> None:
        """Acquire the device(s); raise to make the meter drop this source (with the error as a note)."""

    def read_energy_j(self) -> dict[Key, float | None]:
        """Cumulative energy per channel since ``open`` (wraparound already handled)."""
        return {}

    def sample(self) -> dict[Key, Sample]:
        """Instant power and telemetry for the channels that have them."""
        return {}

    def processes(self) -> dict[Key, list[int]]:
        """PIDs of processes using each device (GPUs), for the 'other processes' check."""
        return {}

    def verify_mapping(self) -> list[str]:
        """Once CUDA is initialised: re-check which device each channel reads; warnings (empty: consistent)."""
        return []

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any] | None:
        return None
