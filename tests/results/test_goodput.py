"""Goodput and energy per good token against hand-computed cases."""

from __future__ import annotations

import pytest

from lem.results.goodput import goodput_section, misses


def request(arrival: float, first: float | None, end: float, n_out: int) -> dict:
    return {"arrival_s": arrival, "first_token_s": first, "end_s": end, "output_tokens": n_out}


# TTFT 0.2 s, TPOT (1.2 - 0.2) / 10 = 100 ms.
FAST = request(0.0, 0.2, 1.2, 11)
# TTFT 0.8 s (queued), TPOT 40 ms.
LATE = request(0.0, 0.8, 1.2, 11)
# TTFT 0.1 s, TPOT (2.1 - 0.1) / 4 = 500 ms.
SLOW = request(1.0, 1.1, 3.1, 5)
ONE_TOKEN = request(0.0, 0.3, 0.3, 1)  # no TPOT: meets any TPOT objective
NOTHING = request(0.0, None, 0.5, 0)  # produced nothing: meets no objective
ENERGY = {"generation_energy_j": 100.0, "net_generation_energy_j": 40.0, "source": "counter"}


def test_a_request_is_good_only_when_it_meets_every_objective():
    objectives = {"ttft_ms": 500.0, "tpot_ms": 200.0}
    assert misses(FAST, objectives) == []
    assert misses(LATE, objectives) == ["ttft_ms"]
    assert misses(SLOW, objectives) == ["tpot_ms"]
    assert misses(ONE_TOKEN, objectives) == []
    assert misses(NOTHING, objectives) == ["ttft_ms", "tpot_ms"]


def test_goodput_counts_good_requests_per_second_and_charges_all_energy_to_good_tokens():
    config = {"slo": {"ttft_ms": 500, "tpot_ms": 200}}
    g = goodput_section([FAST, LATE, SLOW, ONE_TOKEN, NOTHING], config, window_s=4.0, energy=ENERGY)
    assert g["objectives"] == {"ttft_ms": 500.0, "tpot_ms": 200.0}
    assert g["n_good"] == 2 and g["good_fraction"] == pytest.approx(0.4)
    assert g["goodput_requests_per_s"] == pytest.approx(0.5)
    assert g["good_output_tokens"] == 12
    assert g["j_per_good_output_token"] == pytest.approx(100.0 / 12)  # the bad requests' energy is paid for too
    assert g["net_j_per_good_output_token"] == pytest.approx(40.0 / 12)
    assert g["missed"] == {"ttft_ms": 2, "tpot_ms": 2}
    assert g["energy_source"] == "counter"


def test_one_objective_alone_and_none_set():
    g = goodput_section([FAST, LATE, SLOW], {"slo": {"ttft_ms": 500, "tpot_ms": None}}, 2.0, ENERGY)
    assert g["objectives"] == {"ttft_ms": 500.0} and g["n_good"] == 2
    unset = goodput_section([FAST], {"slo": {"ttft_ms": None, "tpot_ms": None}}, 2.0, ENERGY)
    assert unset["objectives"] == {} and unset["goodput_requests_per_s"] is None and unset["j_per_good_output_token"] is None


def test_no_good_request_leaves_energy_per_good_token_null_not_infinite():
    g = goodput_section([SLOW], {"slo": {"tpot_ms": 100}}, 2.0, ENERGY)
    assert g["n_good"] == 0 and g["goodput_requests_per_s"] == 0.0
    assert g["j_per_good_output_token"] is None
