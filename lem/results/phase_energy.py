"""Energy of one phase from its readings: totals per (component, source), measured and estimated kept apart.

The basis of the energy part of the late aggregation (``lem.results.energy``, the steady
state and the cycles use it). Figures nothing measured are ``None`` — never 0 — and measured
and estimated energy are never added into one number: each total says its sources
(``counter+rapl``), and estimates are reported apart.
"""

from __future__ import annotations

import math
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
    the same total net of idle, None unless every reading in it has an idle baseline;
    ``net_energy_uncertainty_j`` its one-sigma uncertainty from the idle baselines' standard errors
    (linear over one device's windows, which share its baseline; in quadrature across devices).

    A device that was metered but has no reading in a window (a failed read, a GPU with neither
    counter nor power) does not vanish: every total is then None, ``partial_energy_j`` holds the
    sum of the devices that were read, ``missing_devices`` names the rest, and a warning says so.
    """
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    missing: list[str] = []
    for r in readings:
        if r.get("energy_j") is None:  # nothing measured this device in this window: never counted as 0
            name = f"{r.get('device')} ({r.get('component')})"
            if name not in missing:
                missing.append(name)
            continue
        source = r.get("source") or "unknown"
        key = (str(r.get("component")), str(source))
        g = groups.setdefault(key, {"component": key[0], "source": key[1], "n_readings": 0, **{f: 0.0 for f in _SUMMED}})
        g["n_readings"] += 1
        by_device = g.setdefault("_uncertainty_by_device", {})
        u = r.get("net_energy_uncertainty_j")
        device = r.get("device_id") or r.get("device")
        by_device[device] = None if u is None or by_device.get(device, 0.0) is None else by_device.get(device, 0.0) + float(u)
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
        g["net_energy_uncertainty_j"] = _quadrature(g.pop("_uncertainty_by_device")) if g["net_energy_j"] is not None else None
    by_component = [groups[k] for k in sorted(groups)]
    if any(g["source"] == "unknown" for g in by_component):
        warnings.append(f"{where}: energy readings without a source are listed but left out of every total")

    measured = _class_total([g for g in by_component if g["source"] in MEASURED_SOURCES])
    estimated = _class_total([g for g in by_component if g["source"] == ESTIMATED_SOURCE])
    headline = measured if measured["energy_j"] is not None else estimated
    out = {
        "energy_j": headline["energy_j"],
        "energy_source": headline["source"],
        "energy_components": headline["components"],
        "net_energy_j": headline["net_energy_j"],
        "net_energy_uncertainty_j": headline["net_energy_uncertainty_j"],
        "idle_power_w": headline["idle_power_w"],
        "measured_energy_j": measured["energy_j"],
        "estimated_energy_j": estimated["energy_j"],
        "measured_net_energy_j": measured["net_energy_j"],
        "estimated_net_energy_j": estimated["net_energy_j"],
        "energy_by_component": by_component,
        "missing_devices": missing,
        "partial_energy_j": None,
    }
    if missing:
        out["partial_energy_j"] = headline["energy_j"]
        for key in ("energy_j", "net_energy_j", "net_energy_uncertainty_j", "measured_energy_j", "estimated_energy_j",
                    "measured_net_energy_j", "estimated_net_energy_j"):
            out[key] = None
        read = ", ".join(f"{g['component']} ({g['source']})" for g in by_component) or "nothing"
        warnings.append(
            f"{where}: no energy reading for {', '.join(missing)}: its total is left null rather than understated "
            f"(partial_energy_j covers only {read})"
        )
    return out


def _quadrature(by_device: Mapping[Any, float | None]) -> float | None:
    values = list(by_device.values())
    if not values or any(v is None for v in values):
        return None
    return math.sqrt(sum(float(v) ** 2 for v in values))  # type: ignore[arg-type]


def _class_total(groups: list[dict[str, Any]]) -> dict[str, Any]:
    parts = [g for g in groups if g["component"] not in WHOLE_SYSTEM_COMPONENTS] or groups
    if not parts:
        return {"energy_j": None, "source": None, "components": [], "net_energy_j": None, "net_energy_uncertainty_j": None, "idle_power_w": None}

    def total(f: str) -> float | None:
        return None if any(g[f] is None for g in parts) else sum(g[f] for g in parts)

    uncertainties = [g["net_energy_uncertainty_j"] for g in parts]
    net = total("net_energy_j")
    return {
        "energy_j": total("energy_j"),
        "source": "+".join(sorted({g["source"] for g in parts})),
        "components": sorted({g["component"] for g in parts}),
        "net_energy_j": net,
        # Groups hold different devices: independent, so in quadrature.
        "net_energy_uncertainty_j": None if net is None or any(u is None for u in uncertainties) else math.sqrt(sum(u * u for u in uncertainties)),
        "idle_power_w": total("idle_power_w"),
    }


def per(total: float | None, count: float | None) -> float | None:
    """``total / count``; None when the total is unknown or the count is zero or unknown."""
    return total / count if total is not None and count else None

