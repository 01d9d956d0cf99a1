"""The measured run, phase by phase: engine init → model load → warmup → generation.

Every completed event is appended to the raw record file as it happens; the summary is
computed afterwards from those records alone (late aggregation), so it can be recomputed
with ``python -m lem.summarize RUN_DIR``.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from lem import __version__
from lem.config import DatasetSource, LemConfig
from lem.results.schema import EndRecord, FlopsRecord, HeaderRecord, PhaseRecord, RequestRecord
from lem.workload.scheduler import ScheduledBatch, open_loop_batches
from lem.workload.traffic import arrival_offsets_s
from lem.workload.types import GenerationParams


class PhaseClock:
    """Times named phases on one monotonic clock, relative to the run's t0."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.t0_unix_s = time.time()
        self.phases: list[PhaseRecord] = []

    def now_s(self) -> float:
        return time.perf_counter() - self.t0

    def rel(self, perf_counter_value: float) -> float:
        return perf_counter_value - self.t0

    @contextmanager
    def phase(self, name: str, synchronize: Any = None) -> Iterator[None]:
        start_s = self.now_s()
        yield
        if synchronize is not None:
            synchronize()  # close the window on finished device work, not queued work
        self.phases.append(PhaseRecord(name=name, start_s=start_s, end_s=self.now_s()))


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


def run_measurement(cfg: LemConfig, composed_cfg: Any, run_dir: Path, process_index: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Run one measured job into ``run_dir``; return the summary dict."""
    from lem.backends import create_backend
    from lem.measure.memory import PeakMemory
    from lem.report.table import render_summary
    from lem.results.summarize import write_summary
    from lem.results.writer import RawWriter
    from lem.workload.batching import plan_batches
    from lem.workload.prepare import prepare_requests
    from lem.workload.prompts import load_prompts

    run_dir.mkdir(parents=True, exist_ok=True)
    _write_resolved_config(composed_cfg, run_dir)

    # File and dataset problems surface before any model loads.
    prompts = None if cfg.dataset.source is DatasetSource.synthetic else load_prompts(cfg.dataset)

    # Convert/cache the embedded model (or find a hub model) before any phase is timed, so a
    # first-run conversion is not counted as model loading.
    from lem.models.resolve import resolve_model_path

    resolve_model_path(cfg.model)

    clock = PhaseClock()
    memory = PeakMemory()
    memory.start()
    backend = create_backend(cfg)
    with clock.phase("engine_init"):
        backend.init_engine()
    with clock.phase("model_load", backend.synchronize):
        backend.load_model()

    description = backend.describe()
    raw_path = run_dir / "raw" / f"process-{process_index}.jsonl"
    with RawWriter(raw_path) as writer:
        writer.write(
            HeaderRecord(
                process_index=process_index,
                world_size=world_size,
                t0_unix_s=clock.t0_unix_s,
                hostname=platform.node(),
                pid=os.getpid(),
                lem_version=__version__,
                device_type=description.device_type,
                device_names=description.device_names,
                engine=description.engine,
                engine_version=description.engine_version,
                model=cfg.model.name_or_path,
                dtype=description.dtype,
                num_threads=description.num_threads,
            )
        )
        for record in clock.phases:
            writer.write(record)

        if prompts is None:
            prompts = load_prompts(cfg.dataset, tokenizer=backend.tokenizer)
        requests = prepare_requests(prompts, backend.tokenizer, cfg.model, cfg.dataset.max_input_tokens)
        params = generation_params(cfg)
        # Warmup runs the shapes the measured phase starts with: the first planned batches.
        warmup_batches = plan_batches(requests, cfg.batching, params.max_output_tokens)[: cfg.run.warmup_batches]

        warmup_params = replace(
            params,
            max_output_tokens=min(params.max_output_tokens, cfg.run.warmup_max_output_tokens),
            min_output_tokens=min(params.min_output_tokens, cfg.run.warmup_max_output_tokens),
        )
        with clock.phase("warmup", backend.synchronize):
            for batch in warmup_batches:
                backend.generate(batch, warmup_params)
        writer.write(clock.phases[-1])

        offsets_s = arrival_offsets_s(len(requests), cfg.traffic)
        with clock.phase("generation", backend.synchronize):
            for scheduled in open_loop_batches(requests, offsets_s, cfg.batching, params.max_output_tokens, clock.now_s):
                for record in _serve_batch(backend, scheduled, params, clock):
                    writer.write(record)
        writer.write(clock.phases[-1])

        writer.write(memory.stop())
        writer.write(FlopsRecord())  # FLOPs are counted by the measurement layer (not yet wired)
        writer.write(EndRecord(status="completed", end_s=clock.now_s()))

    backend.unload()
    summary = write_summary(run_dir)
    print(render_summary(summary), flush=True)
    print(f"\nresults: {run_dir}", flush=True)
    return summary


def _serve_batch(backend: Any, scheduled: ScheduledBatch, params: GenerationParams, clock: PhaseClock) -> list[RequestRecord]:
    from lem.workload.tokens import count_output_tokens

    batch = scheduled.requests
    raws = backend.generate(batch, params)
    records = []
    for request, arrival_s, raw in zip(batch, scheduled.arrivals_s, raws, strict=True):
        n_output, finish_reason = count_output_tokens(raw.output_token_ids, backend.eos_token_ids, params.ignore_eos)
        token_times_s = [clock.rel(t) for t in raw.token_times[:n_output]]
        start_s = clock.rel(raw.start_time)
        records.append(
            RequestRecord(
                request_id=request.request_id,
                batch_id=scheduled.batch_id,
                batch_size=len(batch),
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
        )
    return records


def _write_resolved_config(composed_cfg: Any, run_dir: Path) -> None:
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(composed_cfg, resolve=True)
    (run_dir / "resolved_config.yaml").write_text(text)
