"""Latency definitions (vLLM's) on hand-made timestamps whose answers are known."""

from __future__ import annotations

import pytest

from lem.results.latency import (
    distribution,
    e2e_ms,
    itl_ms,
    queue_ms,
    request_latencies,
    tpot_ms,
    ttft_ms,
)


def request(arrival: float, start: float, token_times: list[float]) -> dict:
    return {
        "arrival_s": arrival,
        "start_s": start,
        "first_token_s": token_times[0] if token_times else None,
        "end_s": token_times[-1] if token_times else start,
        "token_times_s": token_times,
        "output_tokens": len(token_times),
    }


def test_ttft_includes_queueing_and_e2e_is_end_minus_arrival():
    # Arrived at 1.0, waited until 1.5, first token at 1.75, last at 2.25 (3 tokens).
    r = request(1.0, 1.5, [1.75, 2.0, 2.25])
    assert ttft_ms(r["arrival_s"], r["first_token_s"]) == pytest.approx(750.0)  # not 250: queueing counts
    assert e2e_ms(r["arrival_s"], r["end_s"]) == pytest.approx(1250.0)
    assert queue_ms(r["arrival_s"], r["start_s"]) == pytest.approx(500.0)
    # (E2E − TTFT) / (n − 1) = (1250 − 750) / 2
    assert tpot_ms(1.0, 1.75, 2.25, 3) == pytest.approx(250.0)


def test_pooled_latencies_count_queueing_from_arrival():
    # Two requests arrive together at 0; the second waits for the first batch to finish.
    lat = request_latencies([request(0.0, 0.0, [0.1, 0.2]), request(0.0, 0.2, [0.3, 0.4])])
    assert sorted(lat["ttft_ms"]) == pytest.approx([100.0, 300.0])
    assert sorted(lat["queue_ms"]) == pytest.approx([0.0, 200.0])
    assert sorted(lat["e2e_ms"]) == pytest.approx([200.0, 400.0])
    assert lat["tpot_ms"] == pytest.approx([100.0, 100.0])


def test_tpot_undefined_below_two_tokens():
    assert tpot_ms(0.0, 0.1, 0.1, 1) is None
    assert tpot_ms(0.0, 0.1, 0.1, 0) is None


def test_itl_is_every_gap_and_pools_over_requests():
    assert itl_ms([0.0, 0.1, 0.3]) == pytest.approx([100.0, 200.0])
    assert itl_ms([0.5]) == []
    lat = request_latencies([request(0.0, 0.0, [0.1, 0.2, 0.5]), request(0.0, 0.0, [1.0, 1.4])])
    assert sorted(lat["itl_ms"]) == pytest.approx([100.0, 300.0, 400.0])


def test_itl_is_one_gap_per_streamed_chunk_not_zeros_for_tokens_that_arrived_together():
    # A serving engine streamed token 0 at 0.0, a delta of three tokens at 0.1, one token at 0.3.
    times = [0.0, 0.1, 0.1, 0.1, 0.3]
    assert itl_ms(times) == pytest.approx([100.0, 200.0])  # vLLM's serving benchmark: one gap per chunk
    assert itl_ms([0.2, 0.2, 0.2]) == []  # a single chunk has no gap
    lat = request_latencies([request(0.0, 0.0, times)])
    assert lat["itl_ms"] == pytest.approx([100.0, 200.0]) and 0.0 not in lat["itl_ms"]
    assert lat["tpot_ms"] == pytest.approx([300.0 / 4])  # TPOT still spreads the decode time over every token


def test_itl_of_distinct_token_times_is_every_gap():
    # PyTorch streams one token at a time: every token has its own time, so every gap counts.
    times = [0.05, 0.1, 0.25, 0.3, 0.6]
    assert itl_ms(times) == pytest.approx([50.0, 150.0, 50.0, 300.0])
    assert len(itl_ms(times)) == len(times) - 1


def test_single_token_request_is_excluded_from_tpot_but_not_ttft_or_e2e():
    lat = request_latencies([request(0.0, 0.0, [0.1, 0.2, 0.3]), request(0.0, 0.0, [0.5])])
    assert lat["tpot_ms"] == pytest.approx([100.0])  # only the 3-token request
    assert sorted(lat["ttft_ms"]) == pytest.approx([100.0, 500.0])
    assert sorted(lat["e2e_ms"]) == pytest.approx([300.0, 500.0])


def test_request_without_tokens_has_no_ttft_but_has_e2e():
    lat = request_latencies([request(0.0, 0.2, [])])
    assert lat["ttft_ms"] == [] and lat["tpot_ms"] == [] and lat["itl_ms"] == []
    assert lat["e2e_ms"] == pytest.approx([200.0])


def test_distribution_uses_linear_percentiles():
    d = distribution([1.0, 2.0, 3.0, 4.0, 10.0])
    assert d["n"] == 5
    assert d["mean"] == pytest.approx(4.0)
    assert d["p50"] == pytest.approx(3.0)
    assert d["p90"] == pytest.approx(4.0 + 0.6 * 6.0)  # position 3.6 between 4 and 10
    assert d["p99"] == pytest.approx(4.0 + 0.96 * 6.0)
    assert (d["min"], d["max"]) == (1.0, 10.0)


def test_empty_distribution_is_none_never_zero():
    d = distribution([])
    assert d["n"] == 0
    assert all(d[k] is None for k in ("mean", "p50", "p90", "p99", "min", "max"))
