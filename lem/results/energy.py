"""The energy part of the late aggregation: phase totals, per-token figures, idle, steady state, CO2, GPU utilisation.

Pure functions of the raw records (``lem.results.aggregate`` calls them). Figures nothing
measured are ``None`` — never 0 — and measured and estimated energy are never added into one
number: each total says its sources (``counter+rapl``), and estimates are reported apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lem.measure.energy.arithmetic import cumulative_at, mean_std, trapezoid_j
from lem.records import THROTTLING
from lem.results.reader import RawProcessRecords

MEASURED_SOURCES = frozenset({"counter", "sampled", "rapl"})  # read from a sensor
ESTIMATED_SOURCE = "estimated"  # a model (e.g. CodeCarbon's TDP × load), not a sensor
WHOLE_SYSTEM_COMPONENTS = frozenset({"system"})  # overlaps gpu/cpu/dram: never summed with them
PHASE_SUM_TOLERANCE = 0.005  # phases must add up to the run window within 0.5 %
J_PER_KWH = 3.6e6
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


def _per(total: float | None, count: float | None) -> float | None:
    return total / count if total is not None and count else None


def energy_section(
    procs: list[RawProcessRecords],
    phases: dict[str, Any],
    requests: list[dict[str, Any]],
    tokens: dict[str, Any],
    offsets: Mapping[int, float],
    warnings: list[str],
) -> dict[str, Any]:
    """Headline energy of the measured generation phase, per token, request and second, plus run-level checks.

    ``offsets`` maps ``id(process)`` to the seconds that put its times on the run's clock.
    """
    gen = phases.get("generation") or {}
    e = gen.get("energy_j")
    n_out = tokens["output_tokens"]
    n_req = len(requests)
    wall = gen.get("wall_s")

    any_energy = any(ph.get("energy_by_component") for ph in phases.values())
    if not any_energy:
        warnings.append("no energy measured: every energy figure is null (no sensor available or energy measurement off)")
    elif e is None:
        warnings.append("no energy measured for the generation phase: per-token energy is null")
    if gen.get("energy_source") == ESTIMATED_SOURCE:
        warnings.append("energy estimated: generation energy comes from a model (estimated), not a sensor")
    elif gen.get("estimated_energy_j") is not None:
        est = sorted({g["component"] for g in gen["energy_by_component"] if g["source"] == ESTIMATED_SOURCE})
        warnings.append(f"energy of {', '.join(est)} estimated; reported apart from the measured figures")

    totals = list(phases.values())
    # A sum over phases only when every phase was measured, on one basis (same sources and components).
    same_basis = all(ph.get("energy_j") is not None for ph in totals) and (
        len({(ph["energy_source"], tuple(ph["energy_components"])) for ph in totals}) == 1
    )
    all_phases = sum(ph["energy_j"] for ph in totals) if totals and same_basis else None
    run = _run_window(procs, all_phases, totals[0] if totals and same_basis else None, warnings)
    meters = _meter_records(procs)
    for i, m in meters.items():
        for w in m.get("warnings") or []:
            text = w if len(procs) == 1 else f"process {i}: {w}"
            if text not in warnings:
                warnings.append(text)
    series = _power_series(procs)
    net = gen.get("net_energy_j")
    return {
        "generation_energy_j": e,
        "source": gen.get("energy_source"),
        "components": gen.get("energy_components", []),
        "j_per_output_token": _per(e, n_out),
        "j_per_request": _per(e, n_req),
        "output_tokens_per_j": n_out / e if e else None,
        "mean_power_w": _per(e, wall),
        "measured_j_per_output_token": _per(gen.get("measured_energy_j"), n_out),
        "estimated_j_per_output_token": _per(gen.get("estimated_energy_j"), n_out),
        "net_generation_energy_j": net,
        "net_j_per_output_token": _per(net, n_out),
        "net_mean_power_w": _per(net, wall),
        "idle_power_w": gen.get("idle_power_w"),
        "by_component": [{**g, "j_per_output_token": _per(g["energy_j"], n_out)} for g in gen.get("energy_by_component", [])],
        "all_phases_energy_j": all_phases,
        **run,
        "idle_baseline": _idle_section(procs),
        "steady_state": _steady_state_all_cycles(procs, series, offsets),
        "cross_check": _cross_check(procs),
        "co2": _co2_section(meters, run.get("run_energy_j"), run.get("run_energy_source"), all_phases, totals, gen, n_out, warnings),
        "devices": [{"process_index": i, **c} for i, m in meters.items() for c in m.get("channels") or []],
        "sampler_cpu_pct": _sampler_cpu_pct(meters),
        "codecarbon": next((m.get("codecarbon") for m in meters.values() if m.get("codecarbon")), None),
        "notes": sorted({n for m in meters.values() for n in m.get("notes") or []}),
    }


# --- run window: do the phases add up? ----------------------------------------------------


def _run_window(
    procs: list[RawProcessRecords], all_phases: float | None, phase_basis: Mapping[str, Any] | None, warnings: list[str]
) -> dict[str, Any]:
    readings = [r for p in procs for w in _others(p, "energy_window") if w.get("name") == "run" for r in w.get("energy") or []]
    run = energy_of(readings, [], where="run") if readings else None
    out: dict[str, Any] = {
        "run_energy_j": run["energy_j"] if run else None,
        "run_energy_source": run["energy_source"] if run else None,
        "unattributed_energy_j": None,
        "phase_sum_fraction": None,
    }
    if run is None or run["energy_j"] is None or all_phases is None or phase_basis is None:
        return out
    if (run["energy_source"], run["energy_components"]) != (phase_basis["energy_source"], phase_basis["energy_components"]):
        return out  # different sources or devices: not comparable
    out["unattributed_energy_j"] = run["energy_j"] - all_phases
    out["phase_sum_fraction"] = all_phases / run["energy_j"] if run["energy_j"] else None
    frac = out["phase_sum_fraction"]
    if frac is not None and abs(frac - 1.0) > PHASE_SUM_TOLERANCE:
        warnings.append(
            f"the phases add up to {frac:.1%} of the run's energy ({all_phases:.4g} of {run['energy_j']:.4g} J): "
            f"{out['unattributed_energy_j']:.4g} J was spent between phases, outside any of them"
        )
    return out


# --- idle baseline, cross-check, CO2 --------------------------------------------------------


def _others(p: RawProcessRecords, kind: str) -> list[dict[str, Any]]:
    return [r for r in p.other if r.get("kind") == kind]


def _meter_records(procs: list[RawProcessRecords]) -> dict[int, dict[str, Any]]:
    return {p.process_index: recs[-1] for p in procs if (recs := _others(p, "energy_meter"))}


def _idle_section(procs: list[RawProcessRecords]) -> dict[str, Any] | None:
    devices = []
    records = []
    for p in procs:
        recs = _others(p, "idle_baseline")
        if not recs:
            continue
        rec = recs[-1]
        records.append(rec)
        devices += [{"process_index": p.process_index, **pw} for pw in rec.get("power") or []]
    if not records:
        return None
    return {
        "duration_s": max(float(r["duration_s"]) for r in records),
        "cached": any(r.get("cached") for r in records),
        "oldest_measured_unix_s": min(float(r["measured_unix_s"]) for r in records),
        "devices": devices,
    }


def _cross_check(procs: list[RawProcessRecords]) -> list[dict[str, Any]]:
    """Counter vs integrated power samples, per device, over the generation phase."""
    out = []
    for p in procs:
        for ph in p.phases:
            if ph.get("name") != "generation":
                continue
            for r in ph.get("energy") or []:
                if r.get("source") in ("counter", "rapl", "estimated") and r.get("energy_j") and r.get("sampled_energy_j") is not None:
                    out.append(
                        {
                            "process_index": p.process_index,
                            "device": r["device"],
                            "counter_energy_j": r["energy_j"],
                            "sampled_energy_j": r["sampled_energy_j"],
                            "sampled_over_counter": r["sampled_energy_j"] / r["energy_j"],
                            "n_samples": r.get("n_samples"),
                        }
                    )
    return out


def _co2_section(
    meters: dict[int, dict[str, Any]],
    run_j: float | None,
    run_source: str | None,
    all_phases: float | None,
    totals: list[dict[str, Any]],
    gen: Mapping[str, Any],
    n_out: int,
    warnings: list[str],
) -> dict[str, Any]:
    values = {(m.get("carbon_intensity_g_per_kwh"), m.get("carbon_intensity_source"), m.get("pue")) for m in meters.values()}
    values = {v for v in values if v[0] is not None}
    if len(values) > 1:
        warnings.append("processes recorded different carbon intensities or PUEs: CO2 uses process 0's")
    chosen = next(((m["carbon_intensity_g_per_kwh"], m.get("carbon_intensity_source"), m.get("pue")) for _, m in sorted(meters.items()) if m.get("carbon_intensity_g_per_kwh") is not None), None)
    intensity, source, pue = chosen if chosen else (None, None, None)
    pue = float(pue) if pue is not None else 1.0
    if run_j is not None:
        energy, basis, energy_source = run_j, "run window", run_source
    elif all_phases is not None:
        energy, basis, energy_source = all_phases, "sum of phases", totals[0]["energy_source"]
    else:
        energy, basis, energy_source = None, None, None

    def co2(j: float | None) -> float | None:
        return j * pue / J_PER_KWH * intensity if j is not None and intensity is not None else None

    estimated_run = None
    if energy_source and ESTIMATED_SOURCE not in energy_source.split("+"):
        ests = [ph.get("estimated_energy_j") for ph in totals]
        estimated_run = sum(ests) if ests and all(x is not None for x in ests) else None
    return {
        "carbon_intensity_g_per_kwh": intensity,
        "carbon_intensity_source": source,
        "pue": pue if chosen else None,
        "energy_basis": basis,
        "energy_source": energy_source,
        "facility_energy_j": energy * pue if energy is not None and chosen else None,
        "co2_g": co2(energy),
        "estimated_co2_g_apart": co2(estimated_run),  # estimated components not in co2_g (measured headline)
        "generation_co2_g": co2(gen.get("energy_j")),
        "co2_g_per_output_token": _per(co2(gen.get("energy_j")), n_out),
    }


def _sampler_cpu_pct(meters: dict[int, dict[str, Any]]) -> float | None:
    pairs = [(m.get("sampler_cpu_s"), m.get("sampler_wall_s")) for m in meters.values()]
    pairs = [(c, w) for c, w in pairs if c is not None and w]
    return 100.0 * max(c / w for c, w in pairs) if pairs else None


# --- the power timeline: steady state and GPU utilisation -------------------------------------


def _power_series(procs: list[RawProcessRecords]) -> dict[tuple[int, str, str], dict[str, Any]]:
    """Per (process, device, component): the power_samples chunks joined and sorted by time."""
    series: dict[tuple[int, str, str], dict[str, Any]] = {}
    for p in procs:
        for rec in _others(p, "power_samples"):
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


def _steady_state_all_cycles(
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
        "j_per_output_token": _per(energy, tokens),
        "net_j_per_output_token": _per(net, tokens),
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
    idle = {(p.process_index, pw["device"], pw["component"]): pw["mean_power_w"] for p in procs for rec in _others(p, "idle_baseline")[-1:] for pw in rec.get("power") or []}
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
        "j_per_output_token": _per(e["energy_j"], n_tokens),
        "net_j_per_output_token": _per(e["net_energy_j"], n_tokens),
        "estimated_j_per_output_token": _per(e["estimated_energy_j"], n_tokens) if e["energy_source"] != ESTIMATED_SOURCE else None,
    }


def utilisation_section(procs: list[RawProcessRecords]) -> dict[str, Any]:
    """GPU telemetry over each process's generation phase: utilisation, clocks, temperature, power, throttling."""
    from lem.measure.energy.nvml import reason_names

    devices = []
    for (_, device, component), s in _power_series(procs).items():
        p = s["process"]
        gens = [ph for ph in p.phases if ph.get("name") == "generation"]
        if not gens or not any(r["sm_util_pct"] is not None or r["temp_c"] is not None for r in s["rows"]):
            continue
        spans = [(float(g["start_s"]), float(g["end_s"])) for g in gens]  # one per measured cycle
        rows = [r for r in s["rows"] if any(a <= r["t_s"] <= b for a, b in spans)]

        def mean(name: str) -> float | None:
            return mean_std([r[name] for r in rows if r[name] is not None])[0]

        mask = 0
        for r in rows:
            mask |= int(r["throttle_reasons"] or 0)
        temps = [r["temp_c"] for r in rows if r["temp_c"] is not None]
        reasons = reason_names(mask)
        devices.append(
            {
                "process_index": p.process_index,
                "device": device,
                "component": component,
                "n_samples": len(rows),
                "mean_sm_util_pct": mean("sm_util_pct"),
                "mean_mem_util_pct": mean("mem_util_pct"),
                "mean_sm_clock_mhz": mean("sm_clock_mhz"),
                "mean_mem_clock_mhz": mean("mem_clock_mhz"),
                "max_temp_c": max(temps) if temps else None,
                "mean_power_w": mean("power_w"),
                "power_kind": s.get("power_kind"),
                "throttle_reasons": reasons,
                "throttled": any(x in THROTTLING for x in reasons),
            }
        )
    sm = [d["mean_sm_util_pct"] for d in devices if d["mean_sm_util_pct"] is not None]
    return {
        "window": "generation",
        "mean_sm_util_pct": sum(sm) / len(sm) if sm else None,
        "devices": sorted(devices, key=lambda d: (d["process_index"], d["device"])),
    }

