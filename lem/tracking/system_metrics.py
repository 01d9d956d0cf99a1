"""The power, utilisation, clock and temperature timeline as MLflow metric series ("System metrics").

MLflow charts a metric key that starts with ``system/`` on the run's "System metrics" tab,
interactively. Each device's samples (``lem.tracking.run_folder.power_columns``) become
``system/<device>/<quantity>`` — ``system/cuda_0/power_w``, ``system/cuda_0/sm_util_pct``,
``system/cuda_0/sm_clock_mhz``, ``system/cuda_0/temp_c`` — with step = milliseconds since the
run's start (the earliest process t0) and timestamp = the sample's wall-clock time in ms. Power
that a model estimates (CodeCarbon) is ``power_w_estimated``, never mistaken for a sensor's.
A long run is averaged down to at most :data:`MAX_POINTS` points a series (bucket means keep
the energy under the curve). Needs no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

from lem.tracking.metrics import finite_number, metric_name
from lem.tracking.run_folder import power_columns

SYSTEM_PREFIX = "system"
MAX_POINTS = 2000  # a series' points, at most: cheap to log, enough to chart
# Timeline columns charted, with their unit in the name (energy_j is a counter, throttle_reasons a bitmask).
SERIES_COLUMNS = ("power_w", "sm_util_pct", "mem_util_pct", "sm_clock_mhz", "mem_clock_mhz", "temp_c")
ESTIMATED_SOURCE = "estimated"


class Point(NamedTuple):
    key: str
    value: float
    timestamp_ms: int
    step_ms: int


def _downsample(points: list[tuple[float, float]], max_points: int) -> list[tuple[float, float]]:
    """(t_s, value) pairs, averaged in consecutive buckets down to ``max_points`` (unchanged when fewer)."""
    if len(points) <= max_points:
        return points
    size = math.ceil(len(points) / max_points)
    out = []
    for i in range(0, len(points), size):
        bucket = points[i : i + size]
        out.append((sum(t for t, _ in bucket) / len(bucket), sum(v for _, v in bucket) / len(bucket)))
    return out


def system_series(processes: Iterable[Any], max_points: int = MAX_POINTS) -> list[Point]:
    """Every device's sampled quantities as points of ``system/<device>/<quantity>`` series."""
    processes = list(processes)
    if not processes:
        return []
    t0s = [t for p in processes if (t := finite_number(p.header.get("t0_unix_s"))) is not None]
    t_ref = min(t0s) if t0s else 0.0
    multi_host = len({p.header.get("hostname") for p in processes}) > 1
    seen: set[str] = set()
    out: list[Point] = []
    for p in processes:
        offset = (finite_number(p.header.get("t0_unix_s")) or t_ref) - t_ref
        for dev, cols in sorted(power_columns(p).items()):
            label = f"{p.header.get('hostname')}/{dev}" if multi_host else dev
            if label in seen:  # the same device named by two processes (e.g. each rank's cpu): keep them apart
                label = f"{label}/process_{p.process_index}"
            seen.add(label)
            estimated = (cols.get("source") or [None])[0] == ESTIMATED_SOURCE
            times = cols.get("t_s") or []
            for col in SERIES_COLUMNS:
                column = cols.get(col) or []
                points = [
                    (float(t) + offset, v)
                    for t, raw in zip(times, column)
                    if finite_number(t) is not None and (v := finite_number(raw)) is not None
                ]
                if not points:
                    continue
                key = metric_name(SYSTEM_PREFIX, *label.split("/"), f"{col}_estimated" if estimated else col)
                for t, v in _downsample(sorted(points), max_points):
                    out.append(Point(key, v, round((t_ref + t) * 1000), round(t * 1000)))
    return out


def log_system_series(client: Any, run_id: str, processes: Iterable[Any], chunk: int = 1000) -> int:
    """Log the timeline series to an MLflow run in batches of ``chunk``; return how many points."""
    from mlflow.entities import Metric

    metrics = [Metric(pt.key, pt.value, pt.timestamp_ms, pt.step_ms) for pt in system_series(processes)]
    for i in range(0, len(metrics), chunk):
        client.log_batch(run_id, metrics=metrics[i : i + chunk])
    return len(metrics)
