"""The summary sections built on the per-request split: ``attribution``, ``goodput`` and ``floor``.

One entry point for the late aggregation (``lem.results.aggregate``); the split itself is
``lem.results.request_energy``, goodput ``lem.results.goodput``, the floor ``lem.results.floor``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lem.results.goodput import goodput_section
from lem.results.phase_energy import ESTIMATED_SOURCE
from lem.results.reader import RawProcessRecords
from lem.results.request_energy import attribute_run, attribution_section, request_rows


def run_energy_all_components_j(procs: list[RawProcessRecords]) -> float | None:
    """Everything the metered devices drew over the whole run window — the measured ones where any sensor
    read something, else the estimates, as the generation split does; None when a device's run reading is missing."""
    readings = [r for p in procs for w in p.others("energy_window") if w.get("name") == "run" for r in w.get("energy") or []]
    if not readings:
        readings = [r for p in procs for ph in p.phases for r in ph.get("energy") or []]
    measured = any(r.get("source") != ESTIMATED_SOURCE for r in readings)  # never added to an estimate
    readings = [r for r in readings if (r.get("source") != ESTIMATED_SOURCE) == measured]
    only_system = bool(readings) and all(r.get("component") == "system" for r in readings)
    used = [r for r in readings if only_system or r.get("component") != "system"]
    if not used or any(r.get("energy_j") is None for r in used):
        return None
    return sum(float(r["energy_j"]) for r in used)


def pue_of(procs: list[RawProcessRecords]) -> float | None:
    values = [m.get("pue") for p in procs for m in p.others("energy_meter") if m.get("pue") is not None]
    return float(values[0]) if values else None


def attributed_sections(
    procs: list[RawProcessRecords],
    series: Mapping[tuple[int, str, str], Mapping[str, Any]],
    config: Mapping[str, Any] | None,
    requests: list[dict[str, Any]],
    energy: Mapping[str, Any],
    flops: Mapping[str, Any],
    tokens: Mapping[str, Any],
    window_s: float | None,
    warnings: list[str],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary's sections and each request's energy at every boundary (``request_energy.jsonl``), from one
    split of the run (``series``: every device's timeline, ``lem.results.steady_state.power_series``)."""
    from lem.results.floor import floor_section
    from lem.results.gpu_control import gpu_control_section

    att, run_j, pue = attribute_run(procs, series), run_energy_all_components_j(procs), pue_of(procs)
    section = attribution_section(att, run_j, pue, warnings)
    accel, idle = att.accel, att.accel_idle
    floor = floor_section(
        procs, config, flops, output_tokens=int(tokens["output_tokens"]), decode_tokens=att.decode_tokens,
        inverse_batch=att.inverse_batch, context_tokens=att.context_tokens,
        accelerator_j=accel.total_j if accel is not None else None,
        accelerator_net_j=accel.total_j - idle.total_j if accel is not None and idle is not None else None,
        generation_wall_s=window_s,
    )
    sections = {
        "attribution": section,
        "goodput": goodput_section(requests, config, window_s, energy),
        "floor": floor,
        "gpu_control": gpu_control_section(procs, series, warnings),
    }
    return sections, request_rows(att, run_j, pue)
