"""lem's batching policy for engines that schedule requests themselves (vLLM, TensorRT-LLM, llama.cpp):
which of the requests that have arrived the engine is handed, and when.

Engine-independent, so every such engine is driven by the same policy. Two modes:

- ``continuous`` (``batching.strategy=continuous``; what ``auto`` means for these engines): each
  request is handed over as soon as it has arrived and there is room — at most
  ``batching.batch_size`` requests in flight and, when ``batching.max_tokens_per_batch`` is set, at
  most that many token slots (prompt + ``max_output_tokens`` per request) in flight. The engine
  batches whatever it holds at each step; a finished request frees its slot at once.
- ``grouped`` (``static``, ``sorted_static``, ``dynamic``, ``sorted_dynamic``): lem forms the batches
  exactly as for PyTorch (``lem.workload.batching.plan_batches`` over what has arrived) and hands each
  batch over as one group when the engine is idle; the next group waits until the whole group has
  finished. This is static batching on a continuous engine: what continuous batching saves shows as
  the difference between the two modes.

A request held by lem (arrived, not yet handed over) is queueing: its TTFT counts that wait, as a
server's would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lem.config.types import BatchingStrategy
from lem.workload.batching import plan_batches
from lem.workload.types import PreparedRequest

if TYPE_CHECKING:
    from lem.config.schema import BatchingConfig


@dataclass(frozen=True)
class _Together:
    """The policy of ``Admission.all_at_once``: one static group of everything."""

    batch_size: int
    strategy: BatchingStrategy = BatchingStrategy.static
    max_tokens_per_batch: int | None = None


@dataclass(frozen=True)
class Handover:
    """One request handed to the engine: when it arrived, and the group it went with (grouped mode)."""

    request: PreparedRequest
    arrival_time: float  # perf_counter
    batch_id: int | None  # grouped mode: which of lem's batches; None in continuous mode
    batch_size: int | None


class Admission:
    """Hands requests to an engine at their arrival times under lem's batching policy.

    ``arrival_times`` are ``time.perf_counter`` values (all equal for offline traffic). The caller
    (an engine adapter's serve loop) asks ``due(now)`` between engine steps, reports each finished
    request with ``finished(request_id)``, and sleeps ``wait_s(now)`` when nothing is in flight.
    """

    def __init__(
        self,
        requests: Sequence[PreparedRequest],
        arrival_times: Sequence[float],
        batching: BatchingConfig | _Together,
        max_output_tokens: int,
    ) -> None:
        if len(requests) != len(arrival_times):
            raise ValueError("one arrival time per request")
        self.requests = list(requests)
        order = sorted(range(len(requests)), key=lambda i: (arrival_times[i], i))
        self._upcoming = [(requests[i], float(arrival_times[i])) for i in order]
        self._next = 0
        self._queue: list[tuple[PreparedRequest, float]] = []  # arrived, not handed over
        self._in_flight: dict[int, int] = {}  # request_id -> token slots it holds
        self._batching = batching
        self._max_output_tokens = max_output_tokens
        self._grouped = batching.strategy is not BatchingStrategy.continuous
        self._batch_id = 0
        self._handed: dict[int, Handover] = {}
        self.n_requests = len(requests)

    @classmethod
    def all_at_once(cls, requests: Sequence[PreparedRequest], now: float, max_output_tokens: int) -> Admission:
        """Every request handed over together at ``now`` (warmup: one batch served as it is)."""
        return cls(requests, [now] * len(requests), _Together(batch_size=max(1, len(requests))), max_output_tokens)

    @property
    def max_in_flight(self) -> int:
        """The most requests the engine is ever handed at once (``batching.batch_size``)."""
        return self._batching.batch_size

    @property
    def done(self) -> bool:
        return self._next >= len(self._upcoming) and not self._queue and not self._in_flight

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def queued(self, now: float) -> int:
        """Requests that have arrived by ``now`` and that lem has not handed over yet."""
        self._arrive(now)
        return len(self._queue)

    def due(self, now: float) -> list[Handover]:
        """The requests to hand to the engine now, in the order to add them."""
        self._arrive(now)
        if not self._queue:
            return []
        if self._grouped:
            return self._next_group()
        return self._fill_slots()

    def finished(self, request_id: int) -> None:
        self._in_flight.pop(request_id, None)

    def handover(self, request_id: int) -> Handover:
        """How request ``request_id`` was handed over (after ``due`` returned it)."""
        return self._handed[request_id]

    def wait_s(self, now: float) -> float:
        """How long until the next arrival (0 when one has arrived or none is left)."""
        if self._queue or self._next >= len(self._upcoming):
            return 0.0
        return max(0.0, self._upcoming[self._next][1] - now)

    # -- policy -----------------------------------------------------------------------------

    def _arrive(self, now: float) -> None:
        while self._next < len(self._upcoming) and self._upcoming[self._next][1] <= now:
            self._queue.append(self._upcoming[self._next])
            self._next += 1

    def _cost(self, request: PreparedRequest) -> int:
        return request.input_tokens + self._max_output_tokens

    def _next_group(self) -> list[Handover]:
        if self._in_flight:
            return []  # a group runs to its end before the next is formed
        arrival_of = {r.request_id: t for r, t in self._queue}
        batch = plan_batches([r for r, _ in self._queue], self._batching, self._max_output_tokens)[0]
        taken = {r.request_id for r in batch}
        self._queue = [(r, t) for r, t in self._queue if r.request_id not in taken]
        handed = [Handover(r, arrival_of[r.request_id], self._batch_id, len(batch)) for r in batch]
        for h in handed:
            self._in_flight[h.request.request_id] = self._cost(h.request)
            self._handed[h.request.request_id] = h
        self._batch_id += 1
        return handed

    def _fill_slots(self) -> list[Handover]:
        budget = self._batching.max_tokens_per_batch
        handed: list[Handover] = []
        while self._queue and len(self._in_flight) < self._batching.batch_size:
            request, arrival = self._queue[0]
            cost = self._cost(request)
            if budget is not None and self._in_flight and sum(self._in_flight.values()) + cost > budget:
                break  # first come, first served: a later, smaller request does not overtake it
            self._queue.pop(0)
            self._in_flight[request.request_id] = cost
            self._handed[request.request_id] = Handover(request, arrival, None, None)
            handed.append(self._handed[request.request_id])
        return handed
