"""Arrival schedules and open-loop batch forming, on a fake clock."""

from __future__ import annotations

import statistics

import pytest

from lem.config.schema import BatchingConfig, TrafficConfig
from lem.config.types import ArrivalProcess, BatchingStrategy
from lem.workload.batching import plan_batches
from lem.workload.scheduler import open_loop_batches
from lem.workload.traffic import arrival_offsets_s
from lem.workload.types import PreparedRequest


def requests(n: int) -> list[PreparedRequest]:
    # varied lengths so sorted strategies differ from dataset order
    return [PreparedRequest(i, tuple(range(1, 2 + (i * 7) % 13)), "", False) for i in range(n)]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def test_offline_everything_arrives_at_zero() -> None:
    assert arrival_offsets_s(4, TrafficConfig()) == [0.0, 0.0, 0.0, 0.0]


def test_constant_rate_is_evenly_spaced() -> None:
    offsets = arrival_offsets_s(5, TrafficConfig(arrival=ArrivalProcess.constant, target_qps=4.0))
    assert offsets == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_poisson_is_seeded_and_has_the_target_mean_rate() -> None:
    cfg = TrafficConfig(arrival=ArrivalProcess.poisson, target_qps=8.0, seed=3)
    a, b = arrival_offsets_s(4000, cfg), arrival_offsets_s(4000, cfg)
    assert a == b and a[0] == 0.0
    assert arrival_offsets_s(4000, TrafficConfig(arrival=ArrivalProcess.poisson, target_qps=8.0, seed=4)) != a
    gaps = [y - x for x, y in zip(a, a[1:])]
    assert statistics.mean(gaps) == pytest.approx(1 / 8.0, rel=0.05)
    # Poisson: exponential gaps, coefficient of variation 1
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, rel=0.08)


@pytest.mark.parametrize(("burstiness", "expected_cv"), [(0.25, 2.0), (4.0, 0.5)])
def test_burstiness_sets_the_gap_spread(burstiness: float, expected_cv: float) -> None:
    cfg = TrafficConfig(arrival=ArrivalProcess.poisson, target_qps=2.0, burstiness=burstiness, seed=1)
    offsets = arrival_offsets_s(6000, cfg)
    gaps = [y - x for x, y in zip(offsets, offsets[1:])]
    assert statistics.mean(gaps) == pytest.approx(0.5, rel=0.08)  # the rate holds whatever the burstiness
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(expected_cv, rel=0.1)


@pytest.mark.parametrize("strategy", list(BatchingStrategy))
def test_offline_batches_equal_the_planned_batches(strategy: BatchingStrategy) -> None:
    reqs = requests(11)
    batching = BatchingConfig(strategy=strategy, batch_size=4, max_tokens_per_batch=60 if "dynamic" in strategy.value else None)
    clock = FakeClock()
    scheduled = list(open_loop_batches(reqs, [0.0] * 11, batching, 5, clock.now, clock.sleep))
    planned = plan_batches(reqs, batching, 5)
    assert [[r.request_id for r in s.requests] for s in scheduled] == [[r.request_id for r in b] for b in planned]
    assert [s.batch_id for s in scheduled] == list(range(len(planned)))
    assert all(a == 100.0 for s in scheduled for a in s.arrivals_s)
    assert clock.slept == []
    served = [len(s.requests) for s in scheduled]  # everything arrived at once: the rest waits behind each batch
    assert [s.waiting for s in scheduled] == [11 - sum(served[: i + 1]) for i in range(len(served))]


def test_batches_form_only_from_arrived_requests_and_queue_while_busy() -> None:
    reqs = requests(8)
    offsets = [0.0, 0.1, 0.2, 0.3, 5.0, 5.1, 5.2, 9.0]
    clock = FakeClock()
    service_s = 1.0  # each batch keeps the engine busy for a second
    served = []
    for s in open_loop_batches(reqs, offsets, BatchingConfig(batch_size=3), 5, clock.now, clock.sleep):
        assert all(a <= clock.now() for a in s.arrivals_s), "a request was served before it arrived"
        served.append(([r.request_id for r in s.requests], clock.now() - 100.0))
        clock.t += service_s
    # t=0: only request 0 has arrived; 1-3 queue while it is served and go together at t=1.
    assert served[0] == ([0], 0.0)
    assert served[1] == ([1, 2, 3], 1.0)
    # idle until request 4 arrives at t=5: the scheduler sleeps rather than spinning
    assert served[2] == ([4], 5.0)
    assert served[3] == ([5, 6], 6.0)
    assert served[4] == ([7], 9.0)
    assert sum(clock.slept) == pytest.approx((5.0 - 2.0) + (9.0 - 7.0))


def test_open_loop_arrivals_do_not_wait_for_the_engine() -> None:
    """Arrival times follow the schedule even when the engine is far slower than the rate."""
    reqs = requests(6)
    offsets = arrival_offsets_s(6, TrafficConfig(arrival=ArrivalProcess.constant, target_qps=10.0))
    clock = FakeClock()
    arrivals = []
    for s in open_loop_batches(reqs, offsets, BatchingConfig(batch_size=2), 5, clock.now, clock.sleep):
        arrivals += s.arrivals_s
        clock.t += 3.0  # engine is 30x slower than the arrival rate
    assert sorted(a - 100.0 for a in arrivals) == pytest.approx(offsets)
