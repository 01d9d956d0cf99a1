"""Pure energy arithmetic shared by the meter and the late aggregation (no I/O, no imports).

Counters are cumulative energies; samples are (time, power) points. Every function returns
``None`` — never 0 — when its inputs cannot support an answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def counter_delta(previous: float, current: float, max_range: float | None) -> float:
    """Increase of a counter that wraps to 0 after ``max_range`` (RAPL's ``max_energy_range_uj``).

    A decrease means exactly one wrap happened between the two reads: the caller must read
    more often than the wrap period (minutes at full power), which the sampler does.
    """
    if current >= previous:
        return current - previous
    if max_range is None or max_range <= 0:
        raise ValueError(f"counter went backwards ({previous} -> {current}) and has no wrap range")
    return max_range - previous + current


def trapezoid_j(times_s: Sequence[float], power_w: Sequence[float | None], start_s: float, end_s: float) -> float | None:
    """Energy of a power trace over [start_s, end_s] by the trapezoidal rule.

    Points outside the interval are used only to interpolate its end points; the trace must
    cover both ends (no extrapolation). ``None`` powers are skipped. None if fewer than two
    usable points bracket the interval.
    """
    pts = sorted((float(t), float(p)) for t, p in zip(times_s, power_w, strict=True) if p is not None and math.isfinite(p))
    if end_s < start_s or len(pts) < 2 or pts[0][0] > start_s or pts[-1][0] < end_s:
        return None
    if end_s == start_s:
        return 0.0
    inside = [(start_s, _interp(pts, start_s))] + [pt for pt in pts if start_s < pt[0] < end_s] + [(end_s, _interp(pts, end_s))]
    return sum((t1 - t0) * (p0 + p1) / 2.0 for (t0, p0), (t1, p1) in zip(inside, inside[1:]))


def cumulative_at(times_s: Sequence[float], energy_j: Sequence[float | None], t_s: float) -> float | None:
    """A cumulative counter's value at ``t_s``, linearly interpolated between its reads; None outside them."""
    pts = sorted((float(t), float(e)) for t, e in zip(times_s, energy_j, strict=True) if e is not None)
    if not pts or t_s < pts[0][0] or t_s > pts[-1][0]:
        return None
    return _interp(pts, t_s)


def _interp(pts: list[tuple[float, float]], t: float) -> float:
    # pts sorted by time and t within [pts[0].t, pts[-1].t]
    lo, hi = 0, len(pts) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pts[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (t0, v0), (t1, v1) = pts[lo], pts[hi]
    if t1 == t0:
        return v1
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1); std is None below two values."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def net_of_idle(energy_j: float | None, idle_power_w: float | None, duration_s: float) -> float | None:
    """Energy above the idle baseline over a window: gross − idle power × duration (may be negative: noise)."""
    if energy_j is None or idle_power_w is None:
        return None
    return energy_j - idle_power_w * duration_s
