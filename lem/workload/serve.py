"""Serving the workload to an engine, open loop, and turning what it returns into request records.

Engine-independent: arrivals come from ``lem.workload.traffic``, batches from
``lem.workload.scheduler``, output tokens are counted by ``lem.workload.tokens`` — the same for
every engine, so engines are compared on equal terms. Times are on the run's ``PhaseClock``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator

from lem.config.types import RecordTokenIds
from lem.records import RequestRecord
from lem.workload.admission import Admission
from lem.workload.scheduler import ScheduledBatch, open_loop_batches
from lem.workload.tokens import count_output_tokens
from lem.workload.types import GenerationParams

if TYPE_CHECKING:
    from lem.config.schema import BatchingConfig, LemConfig
    from lem.workload.steps import StepLog


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
        record_token_ids=records_token_ids(cfg),
    )


# run.record_token_ids=auto records output token ids when a run generates at most this many tokens
# (n_prompts x cycles x max_output_tokens): a few MB of JSON, about what token_times_s already costs.
AUTO_TOKEN_IDS_MAX_TOKENS = 1_000_000


def records_token_ids(cfg: LemConfig) -> bool:
    """Whether request records carry their output token ids (``run.record_token_ids``)."""
    setting = cfg.run.record_token_ids
    if setting is RecordTokenIds.auto:
        return cfg.dataset.n_prompts * cfg.cycles * cfg.dataset.max_output_tokens <= AUTO_TOKEN_IDS_MAX_TOKENS
    return setting is RecordTokenIds.on


def serve_open_loop(
    backend: Any,
    requests: list[Any],
    offsets_s: list[float],
    batching: BatchingConfig,
    params: GenerationParams,
    clock: PhaseClock,
    steps: StepLog,
) -> Iterator[list[RequestRecord]]:
    """Serve the workload open loop under ``batching`` (``auto`` already resolved for the engine);
    yield request records as they complete, and log the batch run at each step in ``steps``.

    Batch engines get batches formed by lem from what has arrived; engines that schedule requests
    themselves (continuous or serial) are handed requests by ``lem.workload.admission`` under the
    same policy.
    """
    if backend.scheduling != "batch":
        start = time.perf_counter()
        admission = Admission(requests, [start + off for off in offsets_s], batching, params.max_output_tokens)
        by_id = {r.request_id: r for r in requests}
        for raw in backend.serve(admission, params, steps):
            handover = admission.handover(raw.request_id)
            arrival = raw.arrival_time if raw.arrival_time is not None else handover.arrival_time
            record = request_record(backend, by_id[raw.request_id], raw, clock.rel(arrival), handover.batch_id, handover.batch_size, params, clock)
            yield [record]
        return
    for scheduled in open_loop_batches(requests, offsets_s, batching, params.max_output_tokens, clock.now_s):
        served = serve_batch(backend, scheduled, params, clock)
        start_s = min(r.start_s for r in served)
        # One row per batch: HF generate runs as many decoding steps as its longest output.
        steps.add(clock.t0 + start_s, len(served), scheduled.waiting, max(r.output_tokens for r in served))
        yield served


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
        truncated=request.truncated,
        output_token_ids=[int(t) for t in raw.output_token_ids[:n_output]] if params.record_token_ids else None,
    )
