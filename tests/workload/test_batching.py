"""Batch plans: sizes, order, token budgets and the padding they cost."""

from __future__ import annotations

import pytest

from lem.config.schema import BatchingConfig
from lem.config.types import BatchingStrategy
from lem.errors import ConfigError
from lem.workload.batching import batch_stats, padded_cost_tokens, plan_batches
from lem.workload.types import PreparedRequest

# Input lengths of a mixed workload, in dataset order.
LENGTHS = [12, 80, 5, 40, 80, 7, 33, 60, 12, 90, 3, 25, 44, 12, 70, 18, 55, 9, 30, 66]
MAX_OUTPUT_TOKENS = 16


def requests_of(lengths: list[int]) -> list[PreparedRequest]:
    return [PreparedRequest(i, tuple(range(n)), f"prompt {i}", False) for i, n in enumerate(lengths)]


def ids(batches: list[list[PreparedRequest]]) -> list[list[int]]:
    return [[r.request_id for r in batch] for batch in batches]


def plan(strategy: BatchingStrategy, lengths: list[int] = LENGTHS, batch_size: int = 4, budget: int | None = None):
    config = BatchingConfig(strategy=strategy, batch_size=batch_size, max_tokens_per_batch=budget)
    return plan_batches(requests_of(lengths), config, MAX_OUTPUT_TOKENS)


def batch_cost(batch: list[PreparedRequest]) -> int:
    return padded_cost_tokens(len(batch), max(r.input_tokens for r in batch), MAX_OUTPUT_TOKENS)


def test_static_keeps_dataset_order_in_fixed_sizes() -> None:
    batches = plan(BatchingStrategy.static, LENGTHS[:7], batch_size=3)
    assert ids(batches) == [[0, 1, 2], [3, 4, 5], [6]]


def test_sorted_static_is_longest_first_and_stable() -> None:
    batches = plan(BatchingStrategy.sorted_static, [12, 80, 5, 80, 12, 40], batch_size=2)
    assert ids(batches) == [[1, 3], [5, 0], [4, 2]]  # equal lengths keep dataset order


def test_sorted_static_pads_less_than_static() -> None:
    static = batch_stats(plan(BatchingStrategy.static))
    ordered = batch_stats(plan(BatchingStrategy.sorted_static))
    assert ordered["padding_fraction"] < static["padding_fraction"]
    assert ordered["n_batches"] == static["n_batches"] == 5


@pytest.mark.parametrize("strategy", [BatchingStrategy.dynamic, BatchingStrategy.sorted_dynamic])
def test_dynamic_respects_budget_and_batch_size(strategy: BatchingStrategy) -> None:
    budget = 300
    batches = plan(strategy, batch_size=4, budget=budget)
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) == 1 or batch_cost(batch) <= budget
    # Greedy: each batch was closed because the next request would not fit.
    for batch, following in zip(batches, batches[1:]):
        grown = [*batch, following[0]]
        assert len(grown) > 4 or batch_cost(grown) > budget


def test_dynamic_keeps_dataset_order() -> None:
    batches = plan(BatchingStrategy.dynamic, budget=300)
    assert [i for batch in ids(batches) for i in batch] == list(range(len(LENGTHS)))
    assert len(batches) > len(LENGTHS) / 4  # the budget, not batch_size, closed some batches


def test_dynamic_budget_fills_batches_with_short_requests() -> None:
    # Twelve short requests: cost of 8 is 8 * (4 + 16) = 160 <= 170; batch_size caps at 8.
    batches = plan(BatchingStrategy.dynamic, [4] * 12, batch_size=8, budget=170)
    assert [len(b) for b in batches] == [8, 4]
    batches = plan(BatchingStrategy.dynamic, [4] * 12, batch_size=8, budget=100)
    assert [len(b) for b in batches] == [5, 5, 2]


def test_request_over_budget_alone_gets_its_own_batch() -> None:
    batches = plan(BatchingStrategy.dynamic, [10, 10, 500, 10], batch_size=8, budget=100)
    assert ids(batches) == [[0, 1], [2], [3]]


def test_sorted_dynamic_pads_less_than_dynamic() -> None:
    dynamic = batch_stats(plan(BatchingStrategy.dynamic, budget=400))
    ordered = batch_stats(plan(BatchingStrategy.sorted_dynamic, budget=400))
    assert ordered["padding_fraction"] < dynamic["padding_fraction"]
    assert ordered["n_batches"] <= dynamic["n_batches"]


@pytest.mark.parametrize("strategy", list(BatchingStrategy))
def test_every_request_is_served_exactly_once(strategy: BatchingStrategy) -> None:
    budget = 250 if strategy in (BatchingStrategy.dynamic, BatchingStrategy.sorted_dynamic) else None
    batches = plan(strategy, budget=budget)
    assert sorted(i for batch in ids(batches) for i in batch) == list(range(len(LENGTHS)))
    assert all(batches)


@pytest.mark.parametrize("strategy", [BatchingStrategy.dynamic, BatchingStrategy.sorted_dynamic])
def test_dynamic_without_budget_is_a_config_error(strategy: BatchingStrategy) -> None:
    with pytest.raises(ConfigError, match="batching.max_tokens_per_batch=null"):
        plan(strategy, budget=None)


def test_no_requests_no_batches() -> None:
    assert plan(BatchingStrategy.sorted_dynamic, [], budget=100) == []
    assert batch_stats([]) == {
        "n_batches": 0,
        "n_requests": 0,
        "batch_size_histogram": {},
        "input_tokens": 0,
        "padded_input_tokens": 0,
        "padding_fraction": 0.0,
    }


def test_batch_stats_by_hand() -> None:
    r = requests_of([2, 4, 3, 3, 3])
    stats = batch_stats([[r[0], r[1]], [r[2]], [r[3], r[4]]])
    assert stats["n_batches"] == 3
    assert stats["n_requests"] == 5
    assert stats["batch_size_histogram"] == {1: 1, 2: 2}
    assert stats["input_tokens"] == 15
    assert stats["padded_input_tokens"] == 8 + 3 + 6  # left-padded to the longest of each batch
    assert stats["padding_fraction"] == pytest.approx(2 / 17)  # padding share of the 17 positions processed
