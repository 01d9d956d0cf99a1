"""A plain-text table of one run's summary for the terminal (no dependencies).

Missing figures print as "—", never as 0: a reader must not mistake "not measured" for "free".
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from lem.report.attribution_table import attribution_lines
from lem.report.numbers import DASH, fmt_bytes, fmt_num, fmt_si

_LABEL_W = 20
_LATENCY_ROWS = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_ms"), ("queue", "queue_ms"))


def render_summary(summary: Mapping[str, Any], width: int = 100) -> str:
    """The headline line, then the summary as aligned sections: run, tokens, throughput, latency,
    phases, energy, memory, warnings (wrapped at word boundaries to ``width`` columns)."""
    from lem.report.headline import headline_line

    out: list[str] = [headline_line(summary), ""]
    _run(out, summary.get("status"), summary.get("run") or {})
    _tokens(out, summary.get("n_requests"), summary.get("tokens") or {})
    _throughput(out, summary.get("throughput") or {}, summary.get("traffic") or {})
    _latency(out, summary.get("latency") or {})
    _phases(out, summary.get("phases") or {})
    _energy(out, summary.get("energy") or {}, summary.get("utilisation") or {})
    _compute(out, summary.get("flops") or {}, summary.get("memory") or {}, summary.get("batching") or {})
    out.extend(attribution_lines(summary))  # per request, prefill/decode, floor, goodput, GPU settings
    _cycles(out, summary.get("cycles"))
    warnings = summary.get("warnings") or []
    out.append("")
    out.append("warnings" if warnings else "warnings: none")
    for w in warnings:
        out.extend(textwrap.wrap(str(w), width=max(width, 40), initial_indent="  ! ", subsequent_indent="    ",
                                 break_long_words=False, break_on_hyphens=False) or ["  !"])
    return "\n".join(out)


def terminal_width(default: int = 100) -> int:
    """Columns of the terminal lem prints to (``default`` when it is not one)."""
    import shutil

    return shutil.get_terminal_size((default, 24)).columns


def _cycles(out: list[str], cycles: Mapping[str, Any] | None) -> None:
    if not cycles:
        return
    rows = []
    for metric, label in (
        ("j_per_output_token", "J/token"),
        ("output_tokens_per_s", "output tok/s"),
        ("mean_power_w", "mean power W"),
        ("ttft_ms_p50", "TTFT p50 ms"),
        ("tpot_ms_p50", "TPOT p50 ms"),
    ):
        st = (cycles.get("stats") or {}).get(metric) or {}
        ci = f"[{fmt_num(st.get('ci95_low'))}, {fmt_num(st.get('ci95_high'))}]" if st.get("ci95_low") is not None else DASH
        ci += " (low clamped at 0)" if st.get("ci95_low_clamped") else ""
        cv = f"{st['cv'] * 100:.1f} %" if st.get("cv") is not None else DASH
        rows.append([label, fmt_num(st.get("mean")), fmt_num(st.get("std")), cv, ci])
    grid(out, f"cycles ({cycles.get('n_cycles')} measured)", ["", "mean", "std", "CV", "95 % CI"], rows, align="lrrrl")


def _kv(out: list[str], label: str, value: str) -> None:
    out.append(f"  {label:<{_LABEL_W - 1}} {value}")  # at least one space even for a long label


def grid(out: list[str], title: str, header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> None:
    """A titled table; ``align`` gives each column "l" or "r" (default: first left, numbers right)."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    widths[0] = max(widths[0], _LABEL_W - 2)
    out.append("")
    out.append(title)
    for r in [header, *rows]:
        cells = [f"{c:<{w}}" if a == "l" else f"{c:>{w}}" for c, w, a in zip(r, widths, align)]
        out.append(("  " + "  ".join(cells)).rstrip())


def _run(out: list[str], status: str | None, run: Mapping[str, Any]) -> None:
    status = status or DASH
    out.append(f"lem run summary: {status}")
    _kv(out, "status", f"{status} ({run.get('n_processes_completed', DASH)} of {run.get('world_size', DASH)} processes completed)")
    _kv(out, "model", str(run.get("model") or DASH))
    engine = run.get("engine") or DASH
    _kv(out, "engine", f"{engine} ({run['engine_version']})" if run.get("engine_version") else str(engine))
    devices = ", ".join(run.get("device_names") or []) or DASH
    _kv(out, "device", f"{run.get('device_type') or DASH}: {devices}")
    _kv(out, "dtype", str(run.get("dtype") or DASH))
    if run.get("num_threads") is not None:
        _kv(out, "threads", str(run["num_threads"]))


def _tokens(out: list[str], n_requests: int | None, tok: Mapping[str, Any]) -> None:
    out.append("")
    out.append("tokens")
    _kv(out, "requests", fmt_num(n_requests))
    truncated = f", {tok['truncated_prompts']} prompts cut to max_input_tokens" if tok.get("truncated_prompts") else ""
    _kv(out, "input tokens", f"{fmt_num(tok.get('input_tokens'))} (mean {fmt_num(tok.get('mean_input_tokens'))}{truncated})")
    _kv(out, "output tokens", f"{fmt_num(tok.get('output_tokens'))} (mean {fmt_num(tok.get('mean_output_tokens'))})")
    reasons = tok.get("finish_reasons") or {}
    if reasons:
        _kv(out, "finish reasons", ", ".join(f"{k} {v}" for k, v in reasons.items()))


def _throughput(out: list[str], th: Mapping[str, Any], traffic: Mapping[str, Any]) -> None:
    out.append("")
    out.append("throughput")
    _kv(out, "generation wall", fmt_num(th.get("generation_wall_s"), "s"))
    _kv(out, "output rate", fmt_num(th.get("output_tokens_per_s"), "tok/s"))
    _kv(out, "total rate (in+out)", fmt_num(th.get("total_tokens_per_s"), "tok/s"))
    _kv(out, "request rate", fmt_num(th.get("requests_per_s"), "req/s"))
    if traffic.get("arrival") not in (None, "offline"):
        target, achieved = fmt_num(traffic.get("target_qps"), "req/s"), fmt_num(traffic.get("achieved_qps"), "req/s")
        _kv(out, "arrivals", f"{traffic['arrival']}: target {target}, achieved {achieved}")


def _latency(out: list[str], lat: Mapping[str, Any]) -> None:
    rows = []
    for label, key in _LATENCY_ROWS:
        d = lat.get(key) or {}
        rows.append([label] + [_ms(d.get(s)) for s in ("mean", "p50", "p90", "p99")] + [fmt_num(d.get("n", 0))])
    grid(out, "latency (ms)", ["", "mean", "p50", "p90", "p99", "n"], rows)


def _ms(x: float | None) -> str:
    # One fixed precision per column keeps the decimal points aligned.
    return DASH if x is None else f"{x:,.2f}"


def _phases(out: list[str], phases: Mapping[str, Any]) -> None:
    rows = []
    for name, ph in phases.items():
        energy = ph.get("energy_j")
        source = ph.get("energy_source") or "not measured"
        if energy is not None and ph.get("energy_components"):
            source += f" ({', '.join(ph['energy_components'])})"
        if energy is not None and ph.get("estimated_energy_j") is not None and ph.get("energy_source") != "estimated":
            source += f"; + {fmt_num(ph['estimated_energy_j'])} J estimated"
        wall = ph.get("wall_s")
        power = energy / wall if energy is not None and wall else None
        rows.append([name, fmt_num(wall), fmt_num(energy), fmt_num(ph.get("net_energy_j")), fmt_num(power), source])
    if not rows:
        rows.append(["(none recorded)", DASH, DASH, DASH, DASH, ""])
    grid(out, "phases", ["", "wall s", "energy J", "net J", "mean W", "source"], rows, align="lrrrrl")


def _energy(out: list[str], en: Mapping[str, Any], util: Mapping[str, Any] | None = None) -> None:
    out.append("")
    source = en.get("source")
    out.append(f"energy (generation, {source})" if source else "energy (generation): not measured")
    net = en.get("net_j_per_output_token")
    sigma = en.get("net_j_per_output_token_uncertainty")
    net_text = fmt_num(net, "J/tok") if sigma is None else f"{fmt_num(net)} ± {fmt_num(sigma)} J/tok"
    _kv(out, "per output token", fmt_num(en.get("j_per_output_token"), "J/tok") + (f" (net of idle {net_text})" if net is not None else ""))
    if en.get("partial_generation_energy_j") is not None:
        _kv(out, "partial (not a total)", f"{fmt_num(en['partial_generation_energy_j'], 'J')}; no reading for {', '.join(en.get('missing_devices') or [])}")
    _kv(out, "per request", fmt_num(en.get("j_per_request"), "J/req"))
    idle = en.get("idle_power_w")
    _kv(out, "mean power", fmt_num(en.get("mean_power_w"), "W") + (f" (idle {fmt_num(idle, 'W')})" if idle is not None else ""))
    _kv(out, "tokens per joule", fmt_num(en.get("output_tokens_per_j"), "tok/J"))
    if source != "estimated" and en.get("estimated_j_per_output_token") is not None:
        _kv(out, "estimated, apart", fmt_num(en.get("estimated_j_per_output_token"), "J/tok"))
    for g in en.get("by_component") or []:
        _kv(out, f"  {g['component']} ({g['source']})", f"{fmt_num(g.get('energy_j'), 'J')}, {fmt_num(g.get('j_per_output_token'), 'J/tok')}")
    ss = en.get("steady_state") or {}
    if ss.get("j_per_output_token") is not None:
        _kv(
            out,
            "steady state",
            f"{fmt_num(ss['j_per_output_token'], 'J/tok')} over {fmt_num(ss.get('wall_s'), 's')} at concurrency "
            f"{ss.get('concurrency')} ({ss.get('energy_source')})",
        )
    if en.get("run_energy_j") is not None:
        frac = en.get("phase_sum_fraction")
        share = f"; phases add up to {frac * 100:.1f} %" if frac is not None else ""
        _kv(out, "whole run", f"{fmt_num(en['run_energy_j'], 'J')} ({en.get('run_energy_source')}){share}")
    co2 = en.get("co2") or {}
    if co2.get("co2_g") is not None:
        _kv(
            out,
            "CO2",
            f"{fmt_num(co2['co2_g'], 'g')} ({co2.get('energy_source')}; {fmt_num(co2.get('carbon_intensity_g_per_kwh'), 'g/kWh')}, "
            f"PUE {co2.get('pue'):g}), {fmt_num(co2.get('co2_g_per_output_token'), 'g/tok')}",
        )
    base = en.get("idle_baseline") or {}
    if base:
        if base.get("cached"):
            settle = ", cached"
        elif base.get("settled") is None:
            settle = ", no measured power to wait on"
        else:
            settled = "settled" if base.get("settled") else "had NOT settled"
            settle = f", power {settled} after {fmt_num(base.get('settle_s'), 's')}"
        _kv(out, "idle measured", f"{base.get('state')}{settle}")
    for d in base.get("devices") or []:
        spread = f" ± {fmt_num(d.get('std_power_w'))}" if d.get("std_power_w") is not None else ""
        cached = ", cached" if base.get("cached") else ""
        _kv(out, f"  idle {d['device']}", f"{fmt_num(d.get('mean_power_w'))}{spread} W ({d.get('source')}, n={d.get('n_samples')}, {fmt_num(base.get('duration_s'), 's')}{cached})")
    for d in en.get("devices") or []:
        c = d.get("config") or {}
        if c:
            limit = c.get("enforced_power_limit_w")
            mig = (c.get("mig_mode") or {}).get("current")
            parts = [
                f"driver {c.get('driver_version') or DASH}",
                f"power limit {fmt_num(limit, 'W')}" if limit is not None else "power limit " + DASH,
                f"persistence {'on' if c.get('persistence_mode') else 'off' if c.get('persistence_mode') is False else DASH}",
                f"{c.get('pstate') or DASH} at start",
            ] + ([f"MIG {mig}"] if mig else [])
            _kv(out, f"  {d['device']} config", ", ".join(parts))
    for d in (util or {}).get("devices") or []:
        parts = [
            f"SM {fmt_num(d.get('mean_sm_util_pct'))} %",
            f"mem {fmt_num(d.get('mean_mem_util_pct'))} %",
            f"{fmt_num(d.get('mean_sm_clock_mhz'), 'MHz')}",
            f"max {fmt_num(d.get('max_temp_c'), '°C')}",
        ]
        if d.get("throttled"):
            parts.append("throttled: " + ", ".join(d.get("throttle_reasons") or []))
        _kv(out, f"  {d['device']} telemetry", ", ".join(parts))


def _compute(out: list[str], flops: Mapping[str, Any], mem: Mapping[str, Any], batching: Mapping[str, Any]) -> None:
    out.append("")
    out.append("memory")
    _kv(out, "peak RSS", fmt_bytes(mem.get("peak_rss_bytes")))
    _kv(out, "CUDA peak allocated", fmt_bytes(mem.get("cuda_peak_allocated_bytes")))
    _kv(out, "CUDA peak reserved", fmt_bytes(mem.get("cuda_peak_reserved_bytes")))
    out.append("")
    out.append("compute")
    src = f" ({flops['source']})" if flops.get("source") else ""

    def prefill(share: float | None) -> str:
        return f", {share * 100:.0f} % prefill" if share is not None else ""

    def pair(executed: str, useful: str) -> str:
        return f"executed {fmt_si(flops.get(executed), 'FLOP')}, useful {fmt_si(flops.get(useful), 'FLOP')}"

    _kv(out, "executed FLOPs", fmt_si(flops.get("total_flops"), "FLOP") + src + prefill(flops.get("executed_prefill_share")))
    _kv(out, "useful FLOPs", fmt_si(flops.get("useful_flops"), "FLOP") + prefill(flops.get("useful_prefill_share")))
    _kv(out, "FLOPs / output tok", pair("executed_flops_per_output_token", "useful_flops_per_output_token"))
    _kv(out, "FLOPs / in+out tok", pair("executed_flops_per_token", "useful_flops_per_token"))
    _kv(out, "achieved", fmt_si(flops.get("flops_per_s"), "FLOP/s") + " executed")
    if flops.get("mfu") is not None:
        n, each = flops.get("n_devices"), flops.get("peak_flops_per_s_per_device")
        devices = f" ({n} GPUs × {fmt_si(each, 'FLOP/s')})" if n and n > 1 and each else ""
        _kv(out, "MFU", f"{flops['mfu'] * 100:.1f} % of {fmt_si(flops.get('peak_flops_per_s'), 'FLOP/s')} peak{devices}")
    out.append("")
    out.append("batching")
    if batching.get("strategy"):
        budget = batching.get("max_tokens_per_batch")
        limit = "at most {} requests in flight" if batching["strategy"] == "continuous" else "batches of up to {} requests"
        _kv(out, "strategy", f"{batching['strategy']} ({limit.format(batching.get('batch_size'))}" + (f", {budget} tokens)" if budget else ")"))
    steps = batching.get("engine_steps") or {}
    if steps.get("n_steps"):
        _kv(
            out, "engine ran",
            f"{steps['mean_running']:.1f} requests per step (max {steps['max_running']}), "
            f"{steps['mean_waiting']:.1f} waiting (max {steps['max_waiting']}), over {steps['n_steps']} steps",
        )
    hist = batching.get("batch_size_histogram") or {}
    if batching.get("n_batches") or not steps.get("n_steps"):
        _kv(out, "batches", f"{fmt_num(batching.get('n_batches'))} (sizes: {', '.join(f'{k}×{v}' for k, v in hist.items()) or DASH})")
    ratio = batching.get("padding_fraction")
    if ratio is not None or not steps.get("n_steps"):
        _kv(out, "padding", DASH if ratio is None else f"{ratio * 100:.1f} % of input positions")
