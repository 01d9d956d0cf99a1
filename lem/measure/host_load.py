"""How busy the host's CPUs were over a window, and how much of it was lem's own processes.

Two snapshots (at the start and end of generation) give the mean number of CPU cores busy on
the whole host and in lem's processes (this process and its children, e.g. vLLM's engine
core); the difference is other work that competed with the measurement. The 1-minute load
average is kept beside it for the reader, but it is not the criterion: it decays over a
minute, so it still holds lem's own warmup (or a previous job of a sweep).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass
class CpuSnapshot:
    t_s: float  # time.monotonic()
    host_busy_s: float | None  # every CPU's non-idle time since boot (None: not readable here)
    lem_cpu_s: float | None  # user + system time of this process and its children
    load_avg_1m: float | None


def snapshot() -> CpuSnapshot:
    host = lem = load = None
    try:
        import psutil

        t = psutil.cpu_times()
        # guest time is already inside user/nice; steal is time the CPUs did not run this host's work.
        host = sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))
        me = psutil.Process()
        own = me.cpu_times()
        lem = own.user + own.system + own.children_user + own.children_system  # reaped children included
        for child in me.children(recursive=True):
            try:
                c = child.cpu_times()
                lem += c.user + c.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    except Exception:  # noqa: BLE001 - no psutil figures on this platform: the busy-host check is skipped
        host = lem = None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return CpuSnapshot(time.monotonic(), host, lem, load)


def busy_cores(start: CpuSnapshot, end: CpuSnapshot) -> tuple[float | None, float | None]:
    """Mean CPU cores busy between two snapshots: ``(whole host, lem's processes)``; None where unknown."""
    span_s = end.t_s - start.t_s
    if span_s <= 0:
        return None, None

    def rate(a: float | None, b: float | None) -> float | None:
        return max(b - a, 0.0) / span_s if a is not None and b is not None else None

    return rate(start.host_busy_s, end.host_busy_s), rate(start.lem_cpu_s, end.lem_cpu_s)
