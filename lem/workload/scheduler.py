"""Open-loop serving for batch engines: requests arrive on schedule, wait in a queue, and each
batch forms from whatever has arrived when the engine is free, within the batching limits.

Offline traffic is the special case where everything has arrived at t = 0; the batches are
then exactly those ``plan_batches`` makes for the whole set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from lem.config.schema import BatchingConfig
from lem.workload.batching import plan_batches
from lem.workload.types import PreparedRequest


@dataclass(frozen=True)
class ScheduledBatch:
    batch_id: int
    requests: list[PreparedRequest]
    arrivals_s: list[float]  # per request, on the caller's clock
    waiting: int = 0  # requests that had arrived and were left in the queue when this batch formed


def open_loop_batches(
    requests: Sequence[PreparedRequest],
    offsets_s: Sequence[float],
    batching: BatchingConfig,
    max_output_tokens: int,
    now_s: Callable[[], float],
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[ScheduledBatch]:
    """Yield batches as the engine asks for them; the caller serves each before asking again.

    ``offsets_s`` are arrival times relative to the moment this generator starts; the
    arrivals yielded are on ``now_s``'s clock, so queueing time is start − arrival.
    """
    if len(requests) != len(offsets_s):
        raise ValueError("one arrival offset per request")
    start_s = now_s()
    order = sorted(range(len(requests)), key=lambda i: (offsets_s[i], i))
    arrival_of = {requests[i].request_id: start_s + offsets_s[i] for i in order}
    queue: list[PreparedRequest] = []
    next_index = 0
    batch_id = 0
    while next_index < len(order) or queue:
        now = now_s()
        while next_index < len(order) and arrival_of[requests[order[next_index]].request_id] <= now:
            queue.append(requests[order[next_index]])
            next_index += 1
        if not queue:
            sleep(max(0.0, arrival_of[requests[order[next_index]].request_id] - now))
            continue
        batch = plan_batches(queue, batching, max_output_tokens)[0]
        taken = {r.request_id for r in batch}
        queue = [r for r in queue if r.request_id not in taken]
        yield ScheduledBatch(batch_id, list(batch), [arrival_of[r.request_id] for r in batch], waiting=len(queue))
        batch_id += 1
