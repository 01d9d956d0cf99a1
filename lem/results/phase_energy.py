"""Energy of one phase from its readings: totals per (component, source), measured and estimated kept apart.

The basis of the energy part of the late aggregation (``lem.results.energy``, the steady
state and the cycles use it). Figures nothing measured are ``None`` — never 0 — and measured
and estimated energy are never added into one number: each total says its sources
(``counter+rapl``), and estimates are reported apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MEASURED_SOURCES = frozenset({"counter", "sampled", "rapl"})  # read from a sensor
ESTIMATED_SOURCE = "estimated"  # a model (e.g. CodeCarbon's TDP × load), not a sensor
WHOLE_SYSTEM_COMPONENTS = frozenset({"system"})  # overlaps gpu/cpu/dram: never summed with them
_SUMMED = ("energy_j", "net_energy_j", "sampled_energy_j", "idle_power_w")  # per-group sums; None if any reading lacks it


def energy_of(readings: list[Mapping[str, Any]], warnings: list[str], where: str = "") -> dict[str, Any]:
    """Energy of one phase from its readings, grouped by (component, source); measured and estimated kept apart.

    ``energy_j`` is the headline: the measured total if any sensor read something, else the
    estimated total, else None (with ``energy_source`` None). Each total sums gpu/cpu/dram
    (and any other component) but not ``system``, which already contains them; a
    ``system`` reading is the total only when it is the sole component. ``net_energy_j`` is
    the same total net of idle, None unless every reading in it has an idle baseline.
    """
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for r in readings:
        if r.get("energy_j") is None:  # nothing measured this device: leave it out, don't count it as 0
            continue
        source = r.get("source") or "unknown"
        key = (str(r.get("component")), str(source))
        g = groups.setdefault(key, {"component": key[0], "source": key[1], "n_readings": 0, **{f: 0.0 for f in _SUMMED}})
        g["n_readings"] += 1
        seen = g.setdefault("_idle_devices", set())
        for f in _SUMMED:
            value = r.get(f)
            if f == "idle_power_w" and value is not None:
                # A power, not an energy: one device measured in several windows (cycles) counts once.
                device_idle = (r.get("device"), value)
                if device_idle in seen:
                    continue
                seen.add(device_idle)
            g[f] = None if value is None or g[f] is None else g[f] + float(value)
    for g in groups.values():
        g.pop("_idle_devices", None)
    by_component = [groups[k] for k in sorted(groups)]
    if any(g["source"] == "unknown" for g in by_component):
        warnings.append(f"{where}: energy readings without a source are listed but left out of every total")

    measured = _class_total([g for g in by_component if g["source"] in MEASURED_SOURCES])
    estimated = _class_total([g for g in by_component if g["source"] == ESTIMATED_SOURCE])
    headline = measured if measured["energy_j"] is not None else estimated
    return {
        "energy_j": headline["energy_j"],
        "energy_source": headline["source"],
        "energy_components": headline["components"],
        "net_energy_j": headline["net_energy_j"],
        "idle_power_w": headline["idle_power_w"],
        "measured_energy_j": measured["energy_j"],
        "estimated_energy_j": estimated["energy_j"],
        "measured_net_energy_j": measured["net_energy_j"],
        "estimated_net_energy_j": estimated["net_energy_j"],
        "energy_by_component": by_component,
    }


def _class_total(groups: list[dict[str, Any]]) -> dict[str, Any]:
    parts = [g for g in groups if g["component"] not in WHOLE_SYSTEM_COMPONENTS] or groups
    if not parts:
        return {"energy_j": None, "source": None, "components": [], "net_energy_j": None, "idle_power_w": None}

    def total(f: str) -> float | None:
        return None if any(g[f] is None for g in parts) else sum(g[f] for g in parts)

    return {
        "energy_j": total("energy_j"),
        "source": "+".join(sorted({g["source"] for g in parts})),
        "components": sorted({g["component"] for g in parts}),
        "net_energy_j": total("net_energy_j"),
        "idle_power_w": total("idle_power_w"),
    }


def per(total: float | None, count: float | None) -> float | None:
    """``total / count``; None when the total is unknown or the count is zero or unknown."""
    return total / count if total is not None and count else None

