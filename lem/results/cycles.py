"""Repeated measured cycles (``cycles=N``): each headline metric per cycle, with mean, spread and 95 % CI.

The confidence interval is Student's t over the cycle values (two-sided 95 %): with N cycles,
mean ± t(0.975, N−1) × std / sqrt(N), with the exact quantile (``scipy.stats.t.ppf``) for every
N — the normal 1.96 is 3.9 % too narrow even at N − 1 = 31. One cycle gives no spread: std and
CI are null.

Positive quantities (J/token, tokens/s, power, latencies) cannot have a mean ≤ 0, so when the
t interval's lower bound falls at or below 0 — few cycles with a large spread — it is clamped
to 0 and ``ci95_low_clamped`` is true. Intersecting a confidence interval with the parameter
space keeps its coverage exactly (the true mean is never excluded by the cut), and claims
nothing the data do not show; a log-normal interval would give a tighter positive bound only
by assuming a distribution that three to five cycles cannot check. A clamped bound says: run
more cycles. Net-of-idle J/token can honestly be ≤ 0 (idle subtraction) and is never clamped.
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import cache
from typing import Any

from lem.results.latency import distribution, request_latencies
from lem.results.phase_energy import energy_of, per
from lem.results.reader import RawProcessRecords, clock_offsets

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
# Physically positive: a CI bound at or below 0 is clamped (module docstring). Net J/token may be <= 0.
POSITIVE = frozenset(HEADLINE) - {"net_j_per_output_token"}


@cache
def t975(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom, t(0.975, df)."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    from scipy.stats import t  # imported here: summaries only, never `lem --help`

    return float(t.ppf(0.975, df))


def mean_std_ci95(values: list[float], *, positive: bool = False) -> dict[str, float | int | bool | None]:
    """Mean, sample standard deviation and the 95 % confidence interval of the mean.

    ``positive``: the quantity cannot be <= 0; a lower bound at or below 0 becomes 0 and
    ``ci95_low_clamped`` is true (None where no interval was computed).
    """
    n = len(values)
    empty = {"std": None, "cv": None, "ci95_low": None, "ci95_high": None, "ci95_low_clamped": None}
    if n == 0:
        return {"n": 0, "mean": None, **empty}
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, **empty}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    low = mean - half
    clamped = positive and low <= 0
    return {
        "n": n, "mean": mean, "std": std, "cv": std / mean if mean else None,
        "ci95_low": 0.0 if clamped else low, "ci95_high": mean + half, "ci95_low_clamped": clamped,
    }


def cycles_section(procs: list[RawProcessRecords], warnings: list[str]) -> dict[str, Any] | None:
    """Per-cycle headline metrics and their statistics; None for a single-cycle run."""
    per_cycle = cycle_rows(procs)
    if len(per_cycle) < 2:
        return None
    return cycle_statistics(per_cycle, warnings)


def cycle_rows(procs: list[RawProcessRecords]) -> list[dict[str, Any]]:
    """Each cycle's headline metrics (one row per generation cycle in the records)."""
    cycles = sorted({int(ph["cycle"]) for p in procs for ph in p.phases if ph.get("name") == "generation" and ph.get("cycle") is not None})
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
    return per_cycle


def cycle_statistics(per_cycle: list[dict[str, Any]], warnings: list[str]) -> dict[str, Any]:
    """Mean, spread and 95 % CI of each headline metric over the cycles' rows (with the warnings they call for)."""
    stats: dict[str, Any] = defaultdict(dict)
    for metric in HEADLINE:
        values = [row[metric] for row in per_cycle]
        # A metric missing in any cycle has no honest mean over the cycles.
        ok = all(v is not None for v in values)
        stats[metric] = mean_std_ci95([float(v) for v in values] if ok else [], positive=metric in POSITIVE)
    n = len(per_cycle)
    cv = stats["j_per_output_token"].get("cv")
    if cv is not None and cv > 0.05:
        warnings.append(f"J/token varies by {cv:.1%} (CV) across {n} cycles: quote the confidence interval, not one cycle")
    clamped = [m for m in HEADLINE if stats[m].get("ci95_low_clamped")]
    if clamped:
        warnings.append(
            f"95 % CI lower bound of {', '.join(clamped)} clamped at 0 (the t interval reached below 0): "
            f"{n} cycles cannot bound these; run more cycles"
        )
    return {"n_cycles": n, "per_cycle": per_cycle, "stats": dict(stats)}
