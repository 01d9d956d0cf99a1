"""A window's readings: one per channel from its two boundary reads, the samples between them, the idle baseline.

The energy of a channel over a window is its counter's increase between the boundary reads
when it has a counter, else its instant power samples integrated over the window
(``sampled``), else None — never 0. Beside a counter the integrated samples are a
cross-check. Telemetry channels (GPUs) also say whether the device throttled and which
other processes used it during the window.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lem.measure.energy.arithmetic import net_of_idle, trapezoid_j
from lem.measure.energy.nvml import reason_names
from lem.measure.energy.sampler import PowerSampler, Snapshot
from lem.measure.energy.sources import Channel, Key
from lem.records import (
    THROTTLING,
    EnergyReading,
    EnergyWindowRecord,
    IdlePower,
    PhaseRecord,
)

MIN_WINDOW_S = 5.0  # below this, counter resolution and boundary effects dominate
RECOMMENDED_WINDOW_S = 20.0
CROSS_CHECK_TOLERANCE = 0.05  # counter vs integrated instant power, windows >= MIN_WINDOW_S


@dataclass
class Window:
    """A closed window: times on the meter's clock (seconds since ``t0``) and one reading per channel."""

    name: str
    start_s: float
    end_s: float
    readings: list[EnergyReading] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def reading(self, device: str) -> EnergyReading | None:
        return next((r for r in self.readings if r.device == device), None)

    def phase_record(self) -> PhaseRecord:
        return PhaseRecord(name=self.name, start_s=self.start_s, end_s=self.end_s, energy=list(self.readings))

    def window_record(self) -> EnergyWindowRecord:
        return EnergyWindowRecord(name=self.name, start_s=self.start_s, end_s=self.end_s, energy=list(self.readings))


def window_readings(sampler: PowerSampler, begin: Snapshot, end: Snapshot, idle: Mapping[Key, IdlePower]) -> list[EnergyReading]:
    """One reading per channel of ``sampler`` over [begin, end], net of its ``idle`` power where known."""
    duration = end.t - begin.t
    readings = []
    for ch in sampler.channels:
        k = ch.key
        e0, e1 = begin.energy.get(k), end.energy.get(k)
        counter = e1 - e0 if e0 is not None and e1 is not None else None
        rows = sampler.rows(k, begin.t, end.t)
        sampled = n_samples = None
        if ch.power_kind is not None:
            power_rows = [r for r in rows if r.power_w is not None]
            n_samples = len(power_rows)
            sampled = trapezoid_j([r.t_s for r in power_rows], [r.power_w for r in power_rows], begin.t, end.t)
        if counter is not None:
            energy, source = counter, ch.counter_source
        elif sampled is not None:
            energy, source = sampled, "sampled"
        else:
            energy, source = None, None
        base = idle.get(k)
        stderr = base.std_error_w if base is not None and energy is not None else None
        uncertainty = stderr * duration if stderr is not None else None  # standard error of the idle mean x duration
        throttle = other = None
        if getattr(sampler.source_of[k], "has_telemetry", False):
            masks = [r.throttle_reasons for r in rows if r.throttle_reasons is not None]
            mask = 0
            for m in masks:
                mask |= m
            throttle = reason_names(mask) if masks else None
            other = other_pids(sampler.pids_seen(k, begin.t, end.t))
        readings.append(
            EnergyReading(
                device=ch.device,
                component=ch.component,
                energy_j=energy,
                source=source,  # type: ignore[arg-type]
                net_energy_j=net_of_idle(energy, base.mean_power_w if base else None, duration),
                idle_power_w=base.mean_power_w if base else None,
                idle_power_std_w=base.std_power_w if base else None,
                sampled_energy_j=sampled,
                n_samples=n_samples,
                throttle_reasons=throttle,
                other_pids=other,
                device_id=ch.identity or None,
                net_energy_uncertainty_j=uncertainty,
            )
        )
    return readings


def window_warnings(window: Window, channels: Sequence[Channel]) -> list[str]:
    """Why this window's figures may be weak: throttling, other processes, counter vs samples disagreeing."""
    out = []
    for r in window.readings:
        throttled = [x for x in r.throttle_reasons or [] if x in THROTTLING]
        if throttled:
            out.append(
                f"{window.name}: {r.device} throttled ({', '.join(throttled)}): clocks were lowered, "
                "so its energy and speed are not those of an unthrottled GPU"
            )
        if r.other_pids:
            out.append(
                f"{window.name}: other processes on {r.device} (pid {', '.join(map(str, r.other_pids))}): "
                "its energy includes their work"
            )
        ch = next(c for c in channels if c.key == (r.device, r.component))
        if (
            r.source == "counter"
            and ch.power_kind == "instant"
            and r.energy_j
            and r.sampled_energy_j
            and window.duration_s >= MIN_WINDOW_S
            and abs(r.sampled_energy_j / r.energy_j - 1.0) > CROSS_CHECK_TOLERANCE
        ):
            out.append(
                f"{window.name}: {r.device} energy counter {r.energy_j:.4g} J and integrated instant power "
                f"{r.sampled_energy_j:.4g} J differ by {abs(r.sampled_energy_j / r.energy_j - 1.0):.1%}"
            )
    return out


def other_pids(seen: set[int]) -> list[int]:
    """PIDs on a GPU that are not this process or its children.

    In a container, NVML reports host PIDs that never equal ours: when our PID is absent a
    single process is taken to be this one; two or more are all reported.
    """
    mine = {os.getpid()}
    try:
        import psutil

        mine |= {c.pid for c in psutil.Process().children(recursive=True)}
    except Exception:
        pass
    if seen & mine:
        return sorted(seen - mine)
    return sorted(seen) if len(seen) > 1 else []


def setup_warnings(
    channels: Sequence[Channel], sources: Sequence[Any], notes: Sequence[str], cuda_indices: Sequence[int], interval_s: float, started: bool
) -> list[str]:
    """Why a meter's figures may be weak from what it could open: no source, estimated devices, no counter."""
    from lem.measure.energy.carbon import estimate_detail

    out: list[str] = []
    delegated = any(n.startswith("host meters") for n in notes)
    if started and not channels and not (delegated and not cuda_indices):
        out.append("no energy source available: every energy figure is null (" + "; ".join(notes) + ")")
    estimated = [c for c in channels if c.counter_source == "estimated"]
    if estimated:
        cc = next((s for s in sources if s.name == "codecarbon"), None)
        detail = estimate_detail(cc.describe() if cc is not None else None)
        out.append(
            f"{' and '.join(c.device for c in estimated)} energy estimated from a model{detail}, not measured: "
            "no readable RAPL counter; reported apart from measured energy"
        )
    for c in channels:
        if c.counter_source is None and c.power_kind is not None:
            out.append(
                f"{c.device} has no energy counter: its energy is integrated from {c.power_kind} power samples "
                f"every {interval_s * 1000:g} ms"
            )
    return out


def short_window_warnings(windows: Sequence[Window]) -> list[str]:
    """One sentence naming the windows shorter than MIN_WINDOW_S, if any."""
    short = [w for w in windows if w.duration_s < MIN_WINDOW_S]
    if not short:
        return []
    return [
        f"window(s) shorter than {MIN_WINDOW_S:g} s, where counter resolution and boundary effects dominate "
        f"(aim for >= {RECOMMENDED_WINDOW_S:g} s): " + ", ".join(f"{w.name} {w.duration_s:.3g} s" for w in short)
    ]
