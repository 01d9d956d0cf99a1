"""Goodput and energy per good token under latency objectives (``slo.ttft_ms``, ``slo.tpot_ms``).

A request is *good* when it meets every objective set (vLLM's serving benchmark's definition:
TTFT ≤ its objective and TPOT ≤ its objective, per request; a request with one output token has
no TPOT and meets that objective; one that produced nothing meets none). Goodput is good
requests per second of the generation window. Energy per good output token divides the whole
generation energy — good and bad requests' alike — by the output tokens of good requests: what a
useful token cost, so a configuration that misses its objectives for most requests pays for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lem.results.latency import tpot_ms, ttft_ms
from lem.results.phase_energy import per

OBJECTIVES = ("ttft_ms", "tpot_ms")  # presets: conf/slo/*.yaml (e.g. MLPerf's Llama-3.1-8B interactive limits)


def objectives_of(config: Mapping[str, Any] | None) -> dict[str, float]:
    """The objectives the run's config sets (``slo.*`` that are not null)."""
    slo = config.get("slo") if isinstance(config, Mapping) else None
    if not isinstance(slo, Mapping):
        return {}
    return {k: float(slo[k]) for k in OBJECTIVES if isinstance(slo.get(k), (int, float)) and not isinstance(slo.get(k), bool)}


def misses(request: Mapping[str, Any], objectives: Mapping[str, float]) -> list[str]:
    """The objectives one request missed ([] when it is good)."""
    first = request.get("first_token_s")
    if first is None:
        return list(objectives)
    values = {
        "ttft_ms": ttft_ms(float(request["arrival_s"]), float(first)),
        "tpot_ms": tpot_ms(float(request["arrival_s"]), float(first), float(request["end_s"]), int(request["output_tokens"])),
    }
    return [k for k, limit in objectives.items() if values[k] is not None and values[k] > limit]


def goodput_section(
    requests: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any] | None,
    window_s: float | None,
    energy: Mapping[str, Any],
) -> dict[str, Any]:
    """The summary's ``goodput`` section; every figure null when no objective is set."""
    objectives = objectives_of(config)
    out: dict[str, Any] = {
        "objectives": objectives, "n_requests": len(requests), "n_good": None, "good_fraction": None, "goodput_requests_per_s": None,
        "good_output_tokens": None, "j_per_good_output_token": None, "net_j_per_good_output_token": None,
        "energy_source": energy.get("source"), "missed": {},
    }
    if not objectives:
        return out
    missed_by = {k: 0 for k in objectives}
    good = []
    for r in requests:
        missed = misses(r, objectives)
        for k in missed:
            missed_by[k] += 1
        if not missed:
            good.append(r)
    good_tokens = sum(int(r["output_tokens"]) for r in good)
    out.update({
        "n_good": len(good),
        "good_fraction": len(good) / len(requests) if requests else None,
        "goodput_requests_per_s": len(good) / window_s if window_s else None,
        "good_output_tokens": good_tokens,
        "j_per_good_output_token": per(energy.get("generation_energy_j"), good_tokens),
        "net_j_per_good_output_token": per(energy.get("net_generation_energy_j"), good_tokens),
        "missed": missed_by,
    })
    return out
