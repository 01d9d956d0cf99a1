"""Has power settled? Mean power (and SM clock) per measured channel over consecutive spans, compared.

Used twice, engine-independently: before the idle baseline (wait until the devices are back to
idle after loading the model) and during warmup (keep warming up until power and clocks under
load stop moving). Only *measured* power counts — NVML instant power or power usage, RAPL
counter deltas — never a model's estimate (CodeCarbon), whose figure follows CPU load, not
the hardware's state. Without measured power there is nothing to settle on: the callers say so
and fall back to a minimum duration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lem.measure.energy.arithmetic import mean_std
from lem.measure.energy.sources import Key

if TYPE_CHECKING:
    from lem.measure.energy.meter import EnergyMeter

SETTLE_SPAN_S = 1.0  # power is compared over consecutive spans of this length
POWER_REL_TOLERANCE = 0.05  # consecutive span means within 5 % ...
POWER_ABS_TOLERANCE_W = 2.0  # ... or within 2 W (an idle CPU package at a few watts is noise-dominated)
CLOCK_REL_TOLERANCE = 0.03  # SM clocks within 3 %


@dataclass
class Level:
    """Mean power (and mean SM clock where the device reports one) of each channel over one span."""

    power_w: dict[Key, float] = field(default_factory=dict)
    sm_clock_mhz: dict[Key, float] = field(default_factory=dict)

    @property
    def total_power_w(self) -> float | None:
        return sum(self.power_w.values()) if self.power_w else None


def measured_power_keys(meter: EnergyMeter) -> list[Key]:
    """Channels whose power is read from hardware (NVML, RAPL), not estimated."""
    return [c.key for c in meter.channels if c.counter_source != "estimated" and (c.power_kind is not None or c.counter_source is not None)]


def level(meter: EnergyMeter, start: float, end: float) -> Level:
    """Mean power and SM clock of every measured channel between two times of the meter's clock."""
    out = Level()
    for key in measured_power_keys(meter):
        rows = meter.sampler.rows(key, start, end)
        power, _ = mean_std([r.power_w for r in rows if r.power_w is not None])
        clock, _ = mean_std([r.sm_clock_mhz for r in rows if r.sm_clock_mhz is not None])
        if power is not None:
            out.power_w[key] = power
        if clock is not None:
            out.sm_clock_mhz[key] = clock
    return out


def steady(previous: Level, current: Level) -> bool:
    """Whether every channel's power (and SM clock) moved less than the tolerances between two spans."""
    if not current.power_w or set(current.power_w) != set(previous.power_w):
        return False
    for key, p in current.power_w.items():
        q = previous.power_w[key]
        if abs(p - q) > max(POWER_ABS_TOLERANCE_W, POWER_REL_TOLERANCE * max(abs(p), abs(q))):
            return False
    for key, c in current.sm_clock_mhz.items():
        d = previous.sm_clock_mhz.get(key)
        if d is not None and abs(c - d) > CLOCK_REL_TOLERANCE * max(c, d):
            return False
    return True


@dataclass
class Settling:
    """What waiting for power to settle did: how long, and whether it settled."""

    waited_s: float
    settled: bool | None  # None: no measured power to settle on


def settle(meter: EnergyMeter, max_s: float, span_s: float = SETTLE_SPAN_S) -> Settling:
    """Wait (sampling) until every measured channel's power is steady over two consecutive spans, at most ``max_s``."""
    if max_s <= 0 or not measured_power_keys(meter):
        return Settling(0.0, None)
    t_begin = meter.now()
    previous: Level | None = None
    while True:
        t_a = meter.now()
        meter.pause(span_s, since=t_a)
        current = level(meter, t_a, meter.now())
        if previous is not None and steady(previous, current):
            settled = True
            break
        if meter.now() - t_begin + span_s > max_s:
            settled = False
            break
        previous = current
    return Settling(meter.now() - t_begin, settled)
