"""The energy part of the late aggregation: phase totals, per-token figures, idle, steady state, CO2, GPU utilisation.

Pure functions of the raw records (``lem.results.aggregate`` calls them). Figures nothing
measured are ``None`` — never 0 — and measured and estimated energy are never added into one
number: each total says its sources (``counter+rapl``), and estimates are reported apart.
The energy of one phase is ``lem.results.phase_energy``; the steady-state window
``lem.results.steady_state``; CO2 ``lem.results.carbon``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lem.measure.energy.arithmetic import mean_std
from lem.records import THROTTLING
from lem.results.carbon import co2_section
from lem.results.phase_energy import ESTIMATED_SOURCE, MEASURED_SOURCES, energy_of, per
from lem.results.reader import RawProcessRecords
from lem.results.steady_state import steady_state_all_cycles

PHASE_SUM_TOLERANCE = 0.005  # phases must add up to the run window within 0.5 %


def energy_section(
    procs: list[RawProcessRecords],
    phases: dict[str, Any],
    requests: list[dict[str, Any]],
    tokens: dict[str, Any],
    offsets: Mapping[int, float],
    warnings: list[str],
    series: Mapping[tuple[int, str, str], dict[str, Any]],
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
    net = gen.get("net_energy_j")
    net_sigma = gen.get("net_energy_uncertainty_j")
    _net_warnings(gen, warnings)
    return {
        "generation_energy_j": e,
        "source": gen.get("energy_source"),
        "components": gen.get("energy_components", []),
        "j_per_output_token": per(e, n_out),
        "j_per_request": per(e, n_req),
        "output_tokens_per_j": n_out / e if e else None,
        "mean_power_w": per(e, wall),
        "measured_j_per_output_token": per(gen.get("measured_energy_j"), n_out),
        "estimated_j_per_output_token": per(gen.get("estimated_energy_j"), n_out),
        "net_generation_energy_j": net,
        "net_generation_energy_uncertainty_j": net_sigma,
        "net_j_per_output_token": per(net, n_out),
        "net_j_per_output_token_uncertainty": per(net_sigma, n_out),
        "partial_generation_energy_j": gen.get("partial_energy_j"),
        "missing_devices": gen.get("missing_devices") or [],
        "net_mean_power_w": per(net, wall),
        "idle_power_w": gen.get("idle_power_w"),
        "by_component": [{**g, "j_per_output_token": per(g["energy_j"], n_out)} for g in gen.get("energy_by_component", [])],
        "all_phases_energy_j": all_phases,
        **run,
        "idle_baseline": _idle_section(procs, warnings),
        "devices_counted_once": devices_counted_once(procs, warnings),
        "steady_state": steady_state_all_cycles(procs, series, offsets),
        "cross_check": _cross_check(procs),
        "co2": co2_section(meters, run.get("run_energy_j"), run.get("run_energy_source"), all_phases, totals, gen, n_out, warnings),
        "devices": [{"process_index": i, **c} for i, m in meters.items() for c in m.get("channels") or []],
        "sampler_cpu_pct": _sampler_cpu_pct(meters),
        "codecarbon": next((m.get("codecarbon") for m in meters.values() if m.get("codecarbon")), None),
        "notes": sorted({n for m in meters.values() for n in m.get("notes") or []}),
    }


# --- run window: do the phases add up? ----------------------------------------------------


def _run_window(
    procs: list[RawProcessRecords], all_phases: float | None, phase_basis: Mapping[str, Any] | None, warnings: list[str]
) -> dict[str, Any]:
    readings = [r for p in procs for w in p.others("energy_window") if w.get("name") == "run" for r in w.get("energy") or []]
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


# --- idle baseline, cross-check, sampler overhead ---------------------------------------------


def _meter_records(procs: list[RawProcessRecords]) -> dict[int, dict[str, Any]]:
    return {p.process_index: recs[-1] for p in procs if (recs := p.others("energy_meter"))}


def _idle_section(procs: list[RawProcessRecords], warnings: list[str]) -> dict[str, Any] | None:
    from lem.measure.energy.baseline import IDLE_STATES, drift, drift_warnings
    from lem.records import IdlePower

    devices, records, drifts = [], [], []
    for p in procs:
        rec = p.idle_baseline()
        if rec is None:
            continue
        records.append(rec)
        devices += [{"process_index": p.process_index, **pw} for pw in rec.get("power") or []]
        after = p.idle_baseline("after_generation")
        if after is not None:
            rows = drift(*([IdlePower(**pw) for pw in r.get("power") or []] for r in (rec, after)))
            drifts += [{"process_index": p.process_index, **d} for d in rows]
            warnings.extend(w for w in drift_warnings(rows) if w not in warnings)
    if not records:
        return None
    states = sorted({str(r.get("state", "unrecorded")) for r in records})
    settle = [r.get("settle_s") for r in records if r.get("settle_s") is not None]
    return {
        "state": states[0] if len(states) == 1 else states,
        "state_description": IDLE_STATES.get(states[0]) if len(states) == 1 else None,
        "duration_s": max(float(r["duration_s"]) for r in records),
        "cached": any(r.get("cached") for r in records),
        "oldest_measured_unix_s": min(float(r["measured_unix_s"]) for r in records),
        "settle_s": max(settle) if settle else None,
        "settled": None if any(r.get("settled") is None for r in records) else all(r.get("settled") for r in records),
        "device_config": {d: c for r in records for d, c in (r.get("device_config") or {}).items()},
        "devices": devices,
        "drift_after_generation": drifts or None,
    }


NET_SIGMAS = 2.0  # a net figure within this many standard uncertainties of zero is not distinguishable from idle


def _net_warnings(gen: dict[str, Any], warnings: list[str]) -> None:
    """Warn where net-of-idle energy is not above idle: <= 0, or within NET_SIGMAS of 0."""
    rows = [("generation", gen.get("net_energy_j"), gen.get("net_energy_uncertainty_j"))]
    # Per component for sensors only: a model's constant (CodeCarbon's RAM) has a net of exactly 0 by construction.
    rows += [
        (f"generation {g['component']} ({g['source']})", g.get("net_energy_j"), g.get("net_energy_uncertainty_j"))
        for g in gen.get("energy_by_component") or []
        if g.get("source") in MEASURED_SOURCES
    ]
    for where, net, sigma in rows:
        if net is None:
            continue
        if net <= 0:
            warnings.append(
                f"{where}: net-of-idle energy is {net:.4g} J (<= 0): the load drew no more than idle within the "
                "measurement's resolution; its net figures say nothing about the configuration"
            )
        elif sigma is not None and net < NET_SIGMAS * sigma:
            warnings.append(
                f"{where}: net-of-idle energy {net:.4g} ± {sigma:.2g} J is within {NET_SIGMAS:g} sigma of zero: "
                "indistinguishable from idle (a longer idle baseline or a heavier load narrows it)"
            )


def devices_counted_once(procs: list[RawProcessRecords], warnings: list[str]) -> bool | None:
    """Whether every physical device (by its recorded identity) is metered by one process only; None without identities.

    Two processes of one run reading the same GPU (by UUID) or the same RAPL zone (by host and
    zone) would count its energy twice in every total: the summary warns, naming both.
    """
    owners: dict[str, set[int]] = {}
    seen_any = False
    for p in procs:
        host = str(p.header.get("hostname"))
        for ph in p.phases:
            for r in ph.get("energy") or []:
                ident = r.get("device_id")
                if not ident or r.get("energy_j") is None:
                    continue
                seen_any = True
                # GPU UUIDs are global; sysfs zones and CodeCarbon ids are only unique on one host.
                key = ident if str(ident).upper().startswith("GPU-") else f"{host}:{ident}"
                owners.setdefault(key, set()).add(p.process_index)
    if not seen_any:
        return None
    twice = {k: v for k, v in owners.items() if len(v) > 1}
    for key, indices in sorted(twice.items()):
        text = f"device {key} is metered by processes {sorted(indices)}: every energy total counts it {len(indices)} times"
        if text not in warnings:
            warnings.append(text)
    return not twice


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


def _sampler_cpu_pct(meters: dict[int, dict[str, Any]]) -> float | None:
    pairs = [(m.get("sampler_cpu_s"), m.get("sampler_wall_s")) for m in meters.values()]
    pairs = [(c, w) for c, w in pairs if c is not None and w]
    return 100.0 * max(c / w for c, w in pairs) if pairs else None


# --- GPU utilisation over the power timeline --------------------------------------------------


def utilisation_section(procs: list[RawProcessRecords], series: Mapping[tuple[int, str, str], dict[str, Any]]) -> dict[str, Any]:
    """GPU telemetry over each process's generation phase: utilisation, clocks, temperature, power, throttling."""
    from lem.measure.energy.nvml import reason_names

    devices = []
    for (_, device, component), s in series.items():
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

