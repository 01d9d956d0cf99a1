"""Serving the workload to an engine, open loop, and turning what it returns into request records.

Engine-independent: arrivals come from ``lem.workload.traffic``, batches from
``lem.workload.scheduler``, output tokens are counted by ``lem.workload.tokens`` — the same for
every engine, so engines are compared on equal terms. Times are on the run's ``PhaseClock``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator

from lem.records import RequestRecord
from lem.workload.scheduler import ScheduledBatch, open_loop_batches
from lem.workload.tokens import count_output_tokens
from lem.workload.types import GenerationParams

if TYPE_CHECKING:
    from lem.config.schema import LemConfig


class PhaseClock:
    """The run's clock: seconds since ``t0`` on ``time.perf_counter``, and ``t0`` in wall-clock time."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.t0_unix_s = time.time()

    def now_s(self) -> float:
        return time.perf_counter() - self.t0

    def rel(self, perf_counter_value: float) -> float:
        return perf_counter_value - self.t0


def generation_params(cfg: LemConfig) -> GenerationParams:
    ds, dec = cfg.dataset, cfg.decoder
    return GenerationParams(
        max_output_tokens=ds.max_output_tokens,
        min_output_tokens=ds.min_output_tokens,
        ignore_eos=ds.ignore_eos,
        do_sample=dec.do_sample,
        temperature=dec.temperature,
        top_p=dec.top_p,
        top_k=dec.top_k,
        repetition_penalty=dec.repetition_penalty,
        seed=dec.seed,
    )


def serve_open_loop(
    backend: Any, requests: list[Any], offsets_s: list[float], cfg: LemConfig, params: GenerationParams, clock: PhaseClock
) -> Iterator[list[RequestRecord]]:
    """Serve the workload open loop; yield request records as they complete.

    Batch engines get batches formed by lem from what has arrived; engines that schedule requests
    themselves (continuous or serial) get every request at its arrival time.
    """
    if backend.scheduling != "batch":
        start = time.perf_counter()
        arrival_times = [start + off for off in offsets_s]
        by_id = {r.request_id: (r, t) for r, t in zip(requests, arrival_times, strict=True)}
        for raw in backend.serve(requests, arrival_times, params):
            request, scheduled_arrival = by_id[raw.request_id]
            arrival = raw.arrival_time if raw.arrival_time is not None else scheduled_arrival
            yield [request_record(backend, request, raw, clock.rel(arrival), None, None, params, clock)]
        return
    for scheduled in open_loop_batches(requests, offsets_s, cfg.batching, params.max_output_tokens, clock.now_s):
        yield serve_batch(backend, scheduled, params, clock)


def serve_batch(backend: Any, scheduled: ScheduledBatch, params: GenerationParams, clock: PhaseClock) -> list[RequestRecord]:
    batch = scheduled.requests
    raws = backend.generate(batch, params)
    return [
        request_record(backend, request, raw, arrival_s, scheduled.batch_id, len(batch), params, clock)
        for request, arrival_s, raw in zip(batch, scheduled.arrivals_s, raws, strict=True)
    ]


def request_record(
    backend: Any,
    request: Any,
    raw: Any,
    arrival_s: float,
    batch_id: int | None,
    batch_size: int | None,
    params: GenerationParams,
    clock: PhaseClock,
) -> RequestRecord:
    """One request's record: output tokens counted the same way for every engine (engine-independent)."""
    n_output, finish_reason = count_output_tokens(raw.output_token_ids, backend.eos_token_ids, params.ignore_eos)
    token_times_s = [clock.rel(t) for t in raw.token_times[:n_output]]
    start_s = clock.rel(raw.start_time)
    return RequestRecord(
        request_id=request.request_id,
        batch_id=batch_id,
        batch_size=batch_size,
        input_tokens=request.input_tokens,
        output_tokens=n_output,
        arrival_s=arrival_s,
        start_s=start_s,
        first_token_s=token_times_s[0] if token_times_s else None,
        end_s=token_times_s[-1] if token_times_s else start_s,
        token_times_s=token_times_s,
        finish_reason=finish_reason,
        padded_input_tokens=raw.padded_input_tokens,
    )
