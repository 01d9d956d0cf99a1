"""The report's lines for what lem measures beyond run-level J/token: energy per request at three
labelled boundaries, prefill vs decode energy, the physical floor, goodput and the GPU settings.

Every energy line names its boundary and its source ("estimated" when a model made it); a figure
nothing measured is "—". Needs nothing but the summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lem.report.numbers import DASH, fmt_num, fmt_si

_LABEL_W = 20


def _kv(out: list[str], label: str, value: str) -> None:
    out.append(f"  {label:<{_LABEL_W - 1}} {value}")


def _dist(d: Mapping[str, Any] | None, unit: str) -> str:
    d = d or {}
    if d.get("mean") is None:
        return DASH
    return f"mean {fmt_num(d['mean'])}, p50 {fmt_num(d.get('p50'))}, p90 {fmt_num(d.get('p90'))}, p99 {fmt_num(d.get('p99'))} {unit}"


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{x * 100:.0f} %"


def attribution_lines(summary: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    att = summary.get("attribution") or {}
    bounds = att.get("boundaries") or {}
    if bounds:
        gross = bounds.get("device_host_gross") or {}
        out += ["", f"energy per request ({gross.get('energy_source') or 'not measured'}; split by {att.get('weighting') or DASH})"]
        for key, label, field, unit in (
            ("accelerator_net", "compute, net", "j_per_request", "J"),
            ("device_host_gross", "+ host, gross", "j_per_request", "J"),
            ("all_in", "all-in, x PUE", "wh_per_request", "Wh"),
        ):
            b = bounds.get(key) or {}
            comps = ", ".join(b.get("components") or []) or DASH
            _kv(out, label, f"{_dist(b.get(field), unit)}  [{comps}]")
        pd = (att.get("prefill_decode") or {}).get("device_host_gross")
        if pd:
            _kv(out, "prefill / decode", (
                f"{_pct(pd.get('prefill_share'))} / {_pct(pd.get('decode_share'))} of generation energy; "
                f"{fmt_num(pd.get('j_per_prefill_token'), 'J')} per prefill token, {fmt_num(pd.get('j_per_decode_token'), 'J')} per decode token"
            ))
        fit = att.get("vs_length") or {}
        if fit.get("j_fixed") is not None:
            terms = [fmt_num(fit["j_fixed"], "J")]
            terms += [f"{fmt_num(fit[k], 'J')}/{name} tok" for k, name in (("j_per_input_token", "input"), ("j_per_output_token", "output")) if fit.get(k) is not None]
            _kv(out, "vs length", " + ".join(terms) + f" (least squares, R² {fmt_num(fit.get('r2'))})")
        check = att.get("check") or {}
        if check.get("generation_energy_j") is not None:
            _kv(out, "adds up", (
                f"{fmt_num(check['attributed_j'], 'J')} to requests + {fmt_num(check['unattributed_j'], 'J')} with none in flight "
                f"= {fmt_num(check['generation_energy_j'], 'J')} (residual {check['residual_j']:.1e} J)"
            ))
    _floor(out, summary.get("floor") or {})
    _goodput(out, summary.get("goodput") or {})
    _gpu_control(out, summary.get("gpu_control"))
    return out


def _floor(out: list[str], fl: Mapping[str, Any]) -> None:
    if not fl:
        return
    out += ["", "physical floor (compute devices)"]
    if fl.get("floor_j_per_output_token") is None:
        _kv(out, "floor", f"{DASH} ({'; '.join(fl.get('notes') or []) or 'not computable'})")
        return
    _kv(out, "floor", (
        f"{fmt_num(fl['floor_j_per_output_token'], 'J/tok')} ({fl.get('bound')}-bound: compute {fmt_num(fl.get('compute_j_per_output_token'))}, "
        f"memory {fmt_num(fl.get('memory_j_per_output_token'))} J/tok)"
    ))
    _kv(out, "on", (
        f"{fl.get('device')}: {fmt_si(fl.get('peak_flops_per_s'), 'FLOP/s')}, "
        f"{fmt_si(fl.get('memory_bandwidth_bytes_per_s'), 'B/s')}, {fmt_num(fl.get('power_w'), 'W')}"
    ))
    ratio, net_ratio = fl.get("measured_over_floor"), fl.get("net_measured_over_floor")
    _kv(out, "measured ÷ floor", f"{fmt_num(ratio)}× gross, {fmt_num(net_ratio)}× net of idle")
    if fl.get("roofline_fraction") is not None:
        _kv(out, "roofline", (
            f"a perfect engine needs {fmt_num(fl['time_floor_s_per_output_token'] * 1000, 'ms')} per output token: "
            f"{fl['roofline_fraction'] * 100:.2g} % of this run's time"
        ))
    for note in fl.get("notes") or []:
        _kv(out, "note", note)


def _goodput(out: list[str], gp: Mapping[str, Any]) -> None:
    objectives = gp.get("objectives") or {}
    if not objectives:
        return
    names = {"ttft_ms": "TTFT", "tpot_ms": "TPOT"}
    out += ["", "goodput (" + ", ".join(f"{names.get(k, k)} ≤ {fmt_num(v)} ms" for k, v in objectives.items()) + ")"]
    n_good = gp.get("n_good")
    missed = ", ".join(f"{names.get(k, k)} {v}" for k, v in (gp.get("missed") or {}).items())
    of = f" of {gp['n_requests']}" if gp.get("n_requests") is not None else ""
    _kv(out, "good requests", f"{fmt_num(n_good)}{of} ({_pct(gp.get('good_fraction'))}); missed: {missed or DASH}")
    _kv(out, "goodput", fmt_num(gp.get("goodput_requests_per_s"), "req/s"))
    _kv(out, "J per good token", (
        f"{fmt_num(gp.get('j_per_good_output_token'), 'J/tok')} gross, {fmt_num(gp.get('net_j_per_good_output_token'), 'J/tok')} net "
        f"({gp.get('energy_source') or 'not measured'})"
    ))


def _gpu_control(out: list[str], gc: Mapping[str, Any] | None) -> None:
    if not gc:
        return
    out += ["", "GPU settings (set by lem, restored after)"]
    for d in gc.get("devices") or []:
        parts = []
        if d.get("power_limit_w") is not None:
            bound = {True: "bound", False: "never bound", None: "binding unknown"}[d.get("cap_bound")]
            parts.append(f"power limit {fmt_num(d.get('enforced_power_limit_w') or d.get('power_limit_w'), 'W')} ({bound}; "
                         f"peak {fmt_num(d.get('max_generation_power_w'), 'W')})")
        if d.get("locked_sm_clock_mhz") is not None:
            parts.append(f"SM clock locked at {fmt_num(d.get('locked_sm_clock_mhz'), 'MHz')} (mean seen {fmt_num(d.get('mean_generation_sm_clock_mhz'), 'MHz')})")
        _kv(out, str(d.get("device")), "; ".join(parts) or DASH)
