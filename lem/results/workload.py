"""The workload part of the late aggregation: the batches lem or the engine formed, and the arrivals the engine saw."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from lem.results.engine_steps import engine_steps_section
from lem.results.reader import RawProcessRecords, clock_offsets


def batching_section(procs: list[RawProcessRecords]) -> dict[str, Any]:
    """Batches over every process and cycle (batch ids restart each cycle), padding over the same requests."""
    batches: dict[tuple[int, int, int], int] = {}
    for p in procs:
        for r in p.requests:
            if r.get("batch_id") is not None:  # continuous-batching engines form no fixed batches
                batches[(p.process_index, int(r.get("cycle") or 0), int(r["batch_id"]))] = int(r["batch_size"])
    sizes = Counter(batches.values())
    requests = [r for p in procs for r in p.requests]
    padded = [r.get("padded_input_tokens") for r in requests]
    padding_fraction = None
    padded_total = None
    if requests and all(v is not None for v in padded):
        padded_total = sum(int(v) for v in padded)  # type: ignore[arg-type]
        n_in = sum(int(r["input_tokens"]) for r in requests)
        # Share of the input positions the engine processed that were padding.
        padding_fraction = (padded_total - n_in) / padded_total if padded_total else None
    settings = procs[0].header.get("engine_settings") or {}
    return {
        **(settings.get("batching") or {}),  # strategy (auto resolved), batch_size, max_tokens_per_batch
        "n_batches": len(batches),
        "mean_batch_size": sum(batches.values()) / len(batches) if batches else None,
        "batch_size_histogram": {str(size): sizes[size] for size in sorted(sizes)},
        "padded_input_tokens": padded_total,
        "padding_fraction": padding_fraction,
        "engine_steps": engine_steps_section(procs),
    }


def traffic_section(
    requests: list[dict[str, Any]], config: Mapping[str, Any] | None, procs: list[RawProcessRecords] | None = None
) -> dict[str, Any]:
    """The arrival process asked for against the one the engine actually saw.

    ``achieved_qps`` pools the cycles: every cycle replays the arrivals from its own start, so
    the gaps between consecutive arrivals *within* a cycle are the sample, and the rate is
    (Σ_c (n_c − 1)) / (Σ_c span_c) — one over their mean gap, the maximum-likelihood rate of a
    Poisson stream seen in several windows (a mean of per-cycle rates would weight a short cycle
    like a long one). The pause between cycles is never a gap. ``procs`` puts every process's
    arrivals on one clock (data-parallel ranks each run a stream: the rate the engines saw in all).
    Null for offline traffic, where every request of a cycle arrives at once.
    """
    traffic_cfg = (config or {}).get("traffic") or {}
    by_cycle: dict[int, list[float]] = defaultdict(list)
    if procs is not None:
        off = clock_offsets(procs)
        for p in procs:
            for r in p.requests:
                by_cycle[int(r.get("cycle") or 0)].append(off[id(p)] + float(r["arrival_s"]))
    else:
        for r in requests:
            by_cycle[int(r.get("cycle") or 0)].append(float(r["arrival_s"]))
    gaps = sum(len(a) - 1 for a in by_cycle.values() if len(a) >= 2)
    span_s = sum(max(a) - min(a) for a in by_cycle.values() if len(a) >= 2)
    offline = getattr(traffic_cfg.get("arrival"), "value", traffic_cfg.get("arrival")) == "offline"
    return {
        "arrival": traffic_cfg.get("arrival"),
        "target_qps": traffic_cfg.get("target_qps"),
        "achieved_qps": gaps / span_s if gaps and span_s > 0 and not offline else None,
        "burstiness": traffic_cfg.get("burstiness"),
    }
