"""Per-request latency with vLLM's definitions; times in seconds in, milliseconds out.

TTFT = first token − arrival (queueing included); E2E = end − arrival;
TPOT = (E2E − TTFT) / (output tokens − 1), only for requests with at least two output tokens;
ITL  = one gap per streamed chunk: between consecutive *distinct* token times (tokens with the
       same time arrived together, as serving engines stream them), pooled over all requests;
queue = start − arrival.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

_MS = 1000.0
LATENCY_METRICS: tuple[str, ...] = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queue_ms")


def ttft_ms(arrival_s: float, first_token_s: float) -> float:
    return (first_token_s - arrival_s) * _MS


def e2e_ms(arrival_s: float, end_s: float) -> float:
    return (end_s - arrival_s) * _MS


def queue_ms(arrival_s: float, start_s: float) -> float:
    return (start_s - arrival_s) * _MS


def tpot_ms(arrival_s: float, first_token_s: float, end_s: float, output_tokens: int) -> float | None:
    """Mean time per output token after the first; None below two tokens (nothing to divide)."""
    if output_tokens < 2:
        return None
    return (e2e_ms(arrival_s, end_s) - ttft_ms(arrival_s, first_token_s)) / (output_tokens - 1)


def itl_ms(token_times_s: Sequence[float]) -> list[float]:
    """Gaps between the chunk arrivals of one request: consecutive distinct token times.

    vLLM and TensorRT-LLM stamp every token of one streamed delta with the same time; like vLLM's
    serving benchmark, such a chunk adds one gap (to the chunk before it), not zeros for its tokens.
    """
    arrivals = [t for i, t in enumerate(token_times_s) if i == 0 or t != token_times_s[i - 1]]
    return [(b - a) * _MS for a, b in zip(arrivals, arrivals[1:])]


def request_latencies(requests: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Pooled per-request values (ms) for every metric in ``LATENCY_METRICS`` from request records."""
    out: dict[str, list[float]] = {m: [] for m in LATENCY_METRICS}
    for r in requests:
        arrival, first, end = r["arrival_s"], r.get("first_token_s"), r["end_s"]
        out["e2e_ms"].append(e2e_ms(arrival, end))
        out["queue_ms"].append(queue_ms(arrival, r["start_s"]))
        if first is None:  # produced no token: it has no first-token time and no gaps
            continue
        out["ttft_ms"].append(ttft_ms(arrival, first))
        tpot = tpot_ms(arrival, first, end, int(r["output_tokens"]))
        if tpot is not None:
            out["tpot_ms"].append(tpot)
        out["itl_ms"].extend(itl_ms(r.get("token_times_s") or []))
    return out


def distribution(values: Iterable[float]) -> dict[str, float | int | None]:
    """mean, p50, p90, p99, min, max (linear-interpolated percentiles) and n; all None when empty."""
    arr = np.asarray(list(values), dtype=float)
    n = int(arr.size)
    if n == 0:  # no data is null, never 0
        return {"mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None, "n": 0}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99], method="linear")
    return {
        "mean": float(arr.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": n,
    }
