"""Group prepared requests into the batches an engine serves, and describe the padding they cost.

Strategies (``batching.strategy``):

- ``static``: consecutive groups of ``batch_size`` in dataset order.
- ``sorted_static``: the same, after a stable sort by input length, longest first. Longest first
  so the largest batch shape runs first: an out-of-memory error surfaces at once, and warmup
  (the first batches) exercises the biggest shapes.
- ``dynamic``: greedy in dataset order; a request joins the open batch while the batch stays
  within ``max_tokens_per_batch`` and ``batch_size``, else it opens the next batch.
- ``sorted_dynamic``: ``dynamic`` after the same longest-first sort, so each batch holds
  requests of similar length and little padding.
- ``continuous``: lem forms no batches (``lem.workload.admission`` hands requests over as they
  arrive, at most ``batch_size`` in flight); planned here as ``static`` groups, which is what the
  engine first holds (the shapes warmup runs).

Cost model for the token budget: a padded batch of ``n`` requests occupies
``n * (longest input in the batch + max_output_tokens)`` token slots, since every row is
left-padded to the longest input and may generate up to ``max_output_tokens``. This is the
KV-cache size the batch may reach, which is what the budget is meant to bound. A request
whose cost alone exceeds the budget is served in a batch by itself (it cannot be split).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from lem.config.types import BatchingStrategy
from lem.errors import ConfigError
from lem.workload.types import PreparedRequest

if TYPE_CHECKING:
    from lem.config.schema import BatchingConfig


def plan_batches(
    requests: Sequence[PreparedRequest], batching: BatchingConfig, max_output_tokens: int
) -> list[list[PreparedRequest]]:
    """The batches to serve, in serving order; every request appears exactly once."""
    if batching.batch_size < 1:
        raise ConfigError("batching.batch_size", batching.batch_size, "a number >= 1")
    strategy = batching.strategy
    sorted_strategies = (BatchingStrategy.sorted_static, BatchingStrategy.sorted_dynamic)
    ordered = sort_longest_first(requests) if strategy in sorted_strategies else list(requests)
    # auto is resolved per engine before serving (lem.backends.registry.effective_batching); here it plans as static.
    if strategy in (BatchingStrategy.auto, BatchingStrategy.static, BatchingStrategy.sorted_static, BatchingStrategy.continuous):
        return _fixed_size(ordered, batching.batch_size)
    if strategy in (BatchingStrategy.dynamic, BatchingStrategy.sorted_dynamic):
        budget_tokens = batching.max_tokens_per_batch
        if budget_tokens is None or budget_tokens < 1:
            allowed = f"a token budget >= 1 when batching.strategy={strategy.value}"
            raise ConfigError("batching.max_tokens_per_batch", budget_tokens, allowed)
        return _token_budget(ordered, batching.batch_size, budget_tokens, max_output_tokens)
    raise ConfigError("batching.strategy", strategy, "one of " + ", ".join(s.value for s in BatchingStrategy))


def sort_longest_first(requests: Sequence[PreparedRequest]) -> list[PreparedRequest]:
    """Longest input first; equal lengths keep dataset order (Python's sort is stable)."""
    return sorted(requests, key=lambda r: -r.input_tokens)


def padded_cost_tokens(batch_size: int, longest_input_tokens: int, max_output_tokens: int) -> int:
    """Token slots a left-padded batch may occupy: every row padded to the longest, plus full output."""
    return batch_size * (longest_input_tokens + max_output_tokens)


def _fixed_size(requests: list[PreparedRequest], batch_size: int) -> list[list[PreparedRequest]]:
    return [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]


def _token_budget(
    requests: list[PreparedRequest], batch_size: int, budget_tokens: int, max_output_tokens: int
) -> list[list[PreparedRequest]]:
    batches: list[list[PreparedRequest]] = []
    current: list[PreparedRequest] = []
    longest_tokens = 0
    for request in requests:
        longest_if_added = max(longest_tokens, request.input_tokens)
        fits = (
            len(current) < batch_size
            and padded_cost_tokens(len(current) + 1, longest_if_added, max_output_tokens) <= budget_tokens
        )
        if current and not fits:
            batches.append(current)
            current, longest_if_added = [], request.input_tokens
        current.append(request)  # an empty batch always takes the request, even one over budget alone
        longest_tokens = longest_if_added
    if current:
        batches.append(current)
    return batches


def batch_stats(batches: Sequence[Sequence[PreparedRequest]]) -> dict[str, Any]:
    """Padding and shape of a batch plan.

    ``padding_fraction`` = share of the input positions the engine processes that are padding,
    each batch left-padded to its longest input (0.0: no padding) — the summary's definition.
    """
    real_input_tokens = sum(r.input_tokens for batch in batches for r in batch)
    padded_input_tokens = sum(len(batch) * max((r.input_tokens for r in batch), default=0) for batch in batches)
    sizes = Counter(len(batch) for batch in batches)
    return {
        "n_batches": len(batches),
        "n_requests": sum(sizes[size] * size for size in sizes),
        "batch_size_histogram": {size: sizes[size] for size in sorted(sizes)},
        "input_tokens": real_input_tokens,
        "padded_input_tokens": padded_input_tokens,
        "padding_fraction": (padded_input_tokens - real_input_tokens) / padded_input_tokens if padded_input_tokens else 0.0,
    }
