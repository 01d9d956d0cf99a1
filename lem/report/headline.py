"""One line that answers "what did this run cost and how fast was it", printed before the detailed
report and written as the MLflow run's description.

``J/token 0.872 gross, 0.216 ± 0.0133 net (estimated) · 31.7 tok/s · TTFT p50 8,395 ms, p99 12,294 ms · TPOT p50 130 ms``

Missing figures print as "—" (never 0); the energy source is always named, so an estimated
figure cannot pass for a measured one. Needs nothing but the summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lem.report.numbers import DASH, fmt_num


def _source_label(energy: Mapping[str, Any]) -> str:
    source = energy.get("source")
    if not source:
        return "not measured"
    return str(source)


def headline_line(summary: Mapping[str, Any]) -> str:
    """J/token (gross and net, with its source), output tok/s, TTFT p50/p99 and TPOT p50 in one line."""
    energy = summary.get("energy") or {}
    latency = summary.get("latency") or {}
    gross, net = energy.get("j_per_output_token"), energy.get("net_j_per_output_token")
    net_text = fmt_num(net)
    uncertainty = energy.get("net_j_per_output_token_uncertainty")
    if net is not None and isinstance(uncertainty, (int, float)):
        net_text += f" ± {fmt_num(uncertainty)}"
    if gross is None and net is None:
        energy_text = f"J/token {DASH} ({_source_label(energy)})"
    else:
        energy_text = f"J/token {fmt_num(gross)} gross, {net_text} net ({_source_label(energy)})"
    ttft = latency.get("ttft_ms") or {}
    tpot = latency.get("tpot_ms") or {}
    tok_s = (summary.get("throughput") or {}).get("output_tokens_per_s")
    return " · ".join((
        energy_text,
        f"{fmt_num(tok_s)} tok/s",
        f"TTFT p50 {fmt_num(ttft.get('p50'))} ms, p99 {fmt_num(ttft.get('p99'))} ms",
        f"TPOT p50 {fmt_num(tpot.get('p50'))} ms",
    ))
