"""Which requests a rank serves and records, when a run is spread over several processes."""

from __future__ import annotations

from typing import Any

from lem.config.schema import ShardingConfig
from lem.config.types import ShardingStrategy


def shard_requests(requests: list[Any], sharding: ShardingConfig, rank: int, size: int) -> list[Any]:
    """Data parallel: rank r serves requests r, r+N, r+2N, ...; tensor parallel: every rank runs them all."""
    if sharding.strategy is ShardingStrategy.data_parallel and size > 1:
        return requests[rank::size]
    return requests


def records_requests(sharding: ShardingConfig, rank: int) -> bool:
    """Tensor-parallel ranks all produce the same tokens: only rank 0 records them (energy comes from every rank)."""
    return not (sharding.strategy is ShardingStrategy.tensor_parallel and rank > 0)
