"""Repeated measured cycles (``cycles=N``): each headline metric per cycle, with mean, spread and 95 % CI.

The confidence interval is Student's t over the cycle values (two-sided 95 %): with N cycles,
mean ± t(0.975, N-1) × std / sqrt(N). One cycle gives no spread: std and CI are null.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from lem.results.latency import distribution, request_latencies
from lem.results.phase_energy import energy_of, per
from lem.results.reader import RawProcessRecords, clock_offsets

# Two-sided 95 % quantiles of Student's t, t(0.975, df), df = 1..30; beyond 30 the normal 1.96 is within 2 %.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
HEADLINE = (
    "j_per_output_token",
    "net_j_per_output_token",
    "output_tokens_per_s",
    "total_tokens_per_s",
    "requests_per_s",
    "mean_power_w",
    "ttft_ms_p50",
    "ttft_ms_p99",
    "tpot_ms_p50",
    "e2e_ms_p50",
)


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def mean_std_ci95(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation and the 95 % confidence interval of the mean."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "cv": None, "ci95_low": None, "ci95_high": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "cv": None, "ci95_low": None, "ci95_high": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "cv": std / mean if mean else None, "ci95_low": mean - half, "ci95_high": mean + half}


def cycles_section(procs: list[RawProcessRecords], warnings: list[str]) -> dict[str, Any] | None:
    """Per-cycle headline metrics and their statistics; None for a single-cycle run."""
    cycles = sorted({int(ph["cycle"]) for p in procs for ph in p.phases if ph.get("name") == "generation" and ph.get("cycle") is not None})
    if len(cycles) < 2:
        return None
    offsets = clock_offsets(procs)
    per_cycle = []
    for c in cycles:
        spans, readings = [], []
        for p in procs:
            off = offsets[id(p)]
            for ph in p.phases:
                if ph.get("name") == "generation" and ph.get("cycle") == c:
                    spans.append((off + float(ph["start_s"]), off + float(ph["end_s"])))
                    readings += ph.get("energy") or []
        requests = [r for p in procs for r in p.requests if int(r.get("cycle") or 0) == c]
        wall = max(e for _, e in spans) - min(b for b, _ in spans) if spans else None
        n_out = sum(int(r["output_tokens"]) for r in requests)
        n_in = sum(int(r["input_tokens"]) for r in requests)
        energy = energy_of(readings, [], where=f"generation cycle {c}")
        lat = {k: distribution(v) for k, v in request_latencies(requests).items()}

        per_cycle.append(
            {
                "cycle": c,
                "n_requests": len(requests),
                "output_tokens": n_out,
                "wall_s": wall,
                "energy_j": energy["energy_j"],
                "energy_source": energy["energy_source"],
                "j_per_output_token": per(energy["energy_j"], n_out),
                "net_j_per_output_token": per(energy["net_energy_j"], n_out),
                "output_tokens_per_s": per(n_out, wall),
                "total_tokens_per_s": per(n_in + n_out, wall),
                "requests_per_s": per(len(requests), wall),
                "mean_power_w": per(energy["energy_j"], wall),
                "ttft_ms_p50": (lat.get("ttft_ms") or {}).get("p50"),
                "ttft_ms_p99": (lat.get("ttft_ms") or {}).get("p99"),
                "tpot_ms_p50": (lat.get("tpot_ms") or {}).get("p50"),
                "e2e_ms_p50": (lat.get("e2e_ms") or {}).get("p50"),
            }
        )
    stats: dict[str, Any] = defaultdict(dict)
    for metric in HEADLINE:
        values = [row[metric] for row in per_cycle]
        # A metric missing in any cycle has no honest mean over the cycles.
        stats[metric] = mean_std_ci95([float(v) for v in values]) if all(v is not None for v in values) else mean_std_ci95([])
    cv = stats["j_per_output_token"].get("cv")
    if cv is not None and cv > 0.05:
        warnings.append(f"J/token varies by {cv:.1%} (CV) across {len(cycles)} cycles: quote the confidence interval, not one cycle")
    return {"n_cycles": len(cycles), "per_cycle": per_cycle, "stats": dict(stats)}
