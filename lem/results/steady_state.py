"""The power timeline (``power_samples`` records) and the steady-state window read from it.

The steady state is the part of each measured cycle during which the engine ran at its peak
concurrency; its energy per token leaves out the ramp-up and the final drain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lem.measure.energy.arithmetic import cumulative_at, trapezoid_j
from lem.results.phase_energy import ESTIMATED_SOURCE, energy_of, per
from lem.results.reader import RawProcessRecords


def power_series(procs: list[RawProcessRecords]) -> dict[tuple[int, str, str], dict[str, Any]]:
    """Per (process, device, component): the power_samples chunks joined and sorted by time."""
    series: dict[tuple[int, str, str], dict[str, Any]] = {}
    for p in procs:
        for rec in p.others("power_samples"):
            key = (id(p), str(rec["device"]), str(rec["component"]))
            s = series.setdefault(key, {"process": p, "source": rec.get("source"), "power_kind": rec.get("power_kind"), "rows": []})
            cols = {name: rec.get(name) for name in ("power_w", "energy_j", "sm_util_pct", "mem_util_pct", "sm_clock_mhz", "mem_clock_mhz", "temp_c", "throttle_reasons")}
            for i, t in enumerate(rec.get("t_s") or []):
                s["rows"].append({"t_s": float(t), **{k: (v[i] if isinstance(v, list) else None) for k, v in cols.items()}})
    for s in series.values():
        s["rows"].sort(key=lambda r: r["t_s"])
    return series


def _energy_between(s: Mapping[str, Any], a: float, b: float) -> tuple[float | None, str | None]:
    rows = s["rows"]
    if s.get("source"):
        e0 = cumulative_at([r["t_s"] for r in rows], [r["energy_j"] for r in rows], a)
        e1 = cumulative_at([r["t_s"] for r in rows], [r["energy_j"] for r in rows], b)
        if e0 is not None and e1 is not None:
            return e1 - e0, s["source"]
    if s.get("power_kind") in ("instant", "power_usage"):
        j = trapezoid_j([r["t_s"] for r in rows], [r["power_w"] for r in rows], a, b)
        if j is not None:
            return j, "sampled"
    return None, None


_NO_STEADY_STATE: dict[str, Any] = {
    "start_s": None, "end_s": None, "wall_s": None, "concurrency": None, "output_tokens": None, "energy_j": None,
    "energy_source": None, "net_energy_j": None, "j_per_output_token": None, "net_j_per_output_token": None,
    "estimated_j_per_output_token": None,
}


def steady_state_all_cycles(
    procs: list[RawProcessRecords], series: dict[tuple[int, str, str], dict[str, Any]], offsets: Mapping[int, float]
) -> dict[str, Any]:
    """The steady-state window of each measured cycle, combined: energies, tokens and wall time summed."""
    cycles = sorted({int(r.get("cycle") or 0) for p in procs for r in p.requests})
    parts = [_steady_state(procs, series, offsets, cycle=c) for c in cycles]
    if len(parts) <= 1:
        return parts[0] if parts else _steady_state(procs, series, offsets)
    if any(part["wall_s"] is None for part in parts):
        return {**_NO_STEADY_STATE, "n_cycles": len(parts)}

    def total(key: str) -> float | None:
        values = [part[key] for part in parts]
        return None if any(v is None for v in values) else sum(values)

    tokens, energy, net = total("output_tokens"), total("energy_j"), total("net_energy_j")
    sources = {part["energy_source"] for part in parts}
    return {
        "start_s": parts[0]["start_s"],
        "end_s": parts[-1]["end_s"],
        "wall_s": total("wall_s"),
        "concurrency": min(part["concurrency"] for part in parts),
        "output_tokens": tokens,
        "energy_j": energy,
        "energy_source": sources.pop() if len(sources) == 1 else None,
        "net_energy_j": net,
        "j_per_output_token": per(energy, tokens),
        "net_j_per_output_token": per(net, tokens),
        "estimated_j_per_output_token": None,
        "n_cycles": len(parts),
    }


def _steady_state(
    procs: list[RawProcessRecords],
    series: dict[tuple[int, str, str], dict[str, Any]],
    offsets: Mapping[int, float],
    cycle: int | None = None,
) -> dict[str, Any]:
    """Energy per token while the engine ran at its peak concurrency.

    The window opens when the number of requests in flight (start → last token) first reaches
    its maximum and closes when it last drops below it, so the ramp-up and the final drain
    are left out. Energy comes from the timeline (cumulative counters interpolated at the
    window's ends, or integrated power); tokens are those whose time falls inside.
    """
    empty = dict(_NO_STEADY_STATE)
    events = []
    for p in procs:
        off = offsets[id(p)]
        for r in p.requests:
            if cycle is not None and int(r.get("cycle") or 0) != cycle:
                continue
            events.append((off + float(r["start_s"]), 1))
            events.append((off + float(r["end_s"]), -1))
    if not events:
        return empty
    events.sort(key=lambda ev: (ev[0], ev[1]))  # at a tie, a request ends before the next one starts
    active = peak = 0
    for _, d in events:
        active += d
        peak = max(peak, active)
    active = 0
    t_fill = t_drain = None
    for t, d in events:
        before = active
        active += d
        if active == peak and t_fill is None:
            t_fill = t
        if before == peak and active < peak:
            t_drain = t
    if t_fill is None or t_drain is None or t_drain <= t_fill:
        return empty
    n_tokens = sum(
        1 for p in procs for r in p.requests for t in r.get("token_times_s") or [] if t_fill <= offsets[id(p)] + float(t) <= t_drain
    )
    idle = {(p.process_index, pw["device"], pw["component"]): pw["mean_power_w"] for p in procs for rec in [p.idle_baseline()] if rec for pw in rec.get("power") or []}
    readings = []
    for (pkey, device, component), s in series.items():
        p = s["process"]
        a, b = t_fill - offsets[pkey], t_drain - offsets[pkey]
        energy, source = _energy_between(s, a, b)
        if energy is None:
            continue
        idle_w = idle.get((p.process_index, device, component))
        readings.append({"device": device, "component": component, "energy_j": energy, "source": source,
                         "net_energy_j": energy - idle_w * (b - a) if idle_w is not None else None})
    e = energy_of(readings, [], where="steady_state")
    return {
        "start_s": t_fill,
        "end_s": t_drain,
        "wall_s": t_drain - t_fill,
        "concurrency": peak,
        "output_tokens": n_tokens,
        "energy_j": e["energy_j"],
        "energy_source": e["energy_source"],
        "net_energy_j": e["net_energy_j"],
        "j_per_output_token": per(e["energy_j"], n_tokens),
        "net_j_per_output_token": per(e["net_energy_j"], n_tokens),
        "estimated_j_per_output_token": per(e["estimated_energy_j"], n_tokens) if e["energy_source"] != ESTIMATED_SOURCE else None,
    }

