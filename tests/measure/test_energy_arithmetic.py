"""Energy arithmetic on synthetic counters and sample streams."""

from __future__ import annotations

import math

import pytest

from lem.measure.energy.arithmetic import (
    counter_delta,
    cumulative_at,
    mean_std,
    net_of_idle,
    trapezoid_j,
)


def test_counter_delta_plain_and_wrapped():
    assert counter_delta(100.0, 350.0, 1000.0) == 250.0
    # Wrapped past max_energy_range_uj: 1000 - 900 before the wrap, 50 after.
    assert counter_delta(900.0, 50.0, 1000.0) == 150.0
    with pytest.raises(ValueError, match="went backwards"):
        counter_delta(900.0, 50.0, None)


def test_trapezoid_constant_ramp_and_interpolated_ends():
    t = [0.0, 1.0, 2.0, 3.0]
    assert trapezoid_j(t, [100.0] * 4, 0.0, 3.0) == pytest.approx(300.0)
    # A ramp 0 -> 300 W over 3 s is integrated exactly: 450 J.
    assert trapezoid_j(t, [0.0, 100.0, 200.0, 300.0], 0.0, 3.0) == pytest.approx(450.0)
    # Window ends between samples: the ends are interpolated (0.5 s at 50 W .. 2.5 s at 250 W).
    assert trapezoid_j(t, [0.0, 100.0, 200.0, 300.0], 0.5, 2.5) == pytest.approx(300.0)
    # A missing sample is skipped, not read as 0 W.
    assert trapezoid_j(t, [100.0, None, 100.0, 100.0], 0.0, 3.0) == pytest.approx(300.0)


def test_trapezoid_refuses_to_extrapolate_or_guess():
    assert trapezoid_j([1.0, 2.0], [100.0, 100.0], 0.0, 2.0) is None  # starts before the first sample
    assert trapezoid_j([0.0], [100.0], 0.0, 0.0) is None  # one sample is no integral
    assert trapezoid_j([], [], 0.0, 1.0) is None


def test_cumulative_counter_interpolation():
    t = [0.0, 1.0, 2.0]
    e = [0.0, 100.0, None]
    assert cumulative_at(t, e, 0.25) == pytest.approx(25.0)
    assert cumulative_at(t, e, 1.0) == pytest.approx(100.0)
    assert cumulative_at(t, e, 1.5) is None  # past the last read value


def test_mean_std_and_net():
    mean, std = mean_std([49.0, 51.0, 49.0, 51.0])
    assert mean == pytest.approx(50.0) and std == pytest.approx(math.sqrt(4 / 3))
    assert mean_std([]) == (None, None) and mean_std([3.0]) == (3.0, None)
    assert net_of_idle(1500.0, 50.0, 10.0) == pytest.approx(1000.0)
    assert net_of_idle(None, 50.0, 10.0) is None and net_of_idle(1500.0, None, 10.0) is None
