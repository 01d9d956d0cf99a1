"""The measured run, phase by phase: engine init → model load → idle baseline → warmup → generation.

Every phase is an energy window of one meter (``lem.measure.energy``), on one monotonic clock;
consecutive phases share their boundary reading, so their energies add up to the whole run's.
Every completed event is appended to the raw record file as it happens; the summary is
computed afterwards from those records alone (late aggregation), so it can be recomputed
with ``python -m lem summarize RUN_DIR``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lem import __version__
from lem.backends.base import keep_artefacts, unload_quietly
from lem.backends.registry import ENGINES, create_engine, effective_batching
from lem.config.rules import resolve_device
from lem.config.schema import EnergyConfig, LemConfig
from lem.config.types import DatasetSource, Device, ReportFormat, ShardingStrategy
from lem.measure import host_load
from lem.records import EndRecord, FlopsRecord, HeaderRecord, RequestRecord
from lem.workload.serve import PhaseClock, generation_params, serve_open_loop
from lem.workload.sharding import records_requests, shard_requests
from lem.workload.steps import StepLog
from lem.workload.traffic import arrival_offsets_s

if TYPE_CHECKING:
    from lem.launch.pool import EnginePool
    from lem.launch.ranks import RankGroup
    from lem.measure.energy import EnergyMeter
    from lem.measure.gpu_control import GpuControl
    from lem.report.progress import Progress

SAMPLE_FLUSH_INTERVAL_S = 5.0  # how often the power timeline is appended to the raw file during generation
RUN_WINDOW = "run"
IDLE_PHASE = "idle_baseline"  # the phase that waits for power to settle and measures idle (between model load and warmup)


class SoloGroup:
    """The rank group of a run in one process: rank 0 of 1, measuring the host, barriers that return at once."""

    rank, size, local_rank, measures_host = 0, 1, 0, True

    def barrier(self) -> None:
        pass


def measured_cuda_indices(cfg: LemConfig, local_rank: int = 0) -> list[int]:
    """CUDA devices (torch numbering) this process's engine uses: what its energy meter watches."""
    from lem.backends.registry import self_parallel
    from lem.backends.serving import engine_parallel_sizes

    if resolve_device(cfg.backend.device) is not Device.cuda:
        return []
    name = cfg.backend.name.value
    engine = ENGINES[name]
    if engine.cuda_indices is not None:  # the engine says which GPUs it computes on (a server: backend.openai.num_gpus)
        return engine.cuda_indices(cfg)
    if self_parallel(name):  # one lem process; the engine's own workers use GPUs 0 .. tp*pp-1
        tp, pp = engine_parallel_sizes(cfg.sharding, getattr(cfg.backend, name), name)
        return list(range(tp * pp))
    if cfg.sharding.strategy is ShardingStrategy.pipeline_parallel:
        return list(range(cfg.sharding.num_shards))  # one process drives every stage's GPU
    return [local_rank]  # one device per process (alone, a replica, or a tensor-parallel rank)


def run_measurement(
    cfg: LemConfig,
    run_dir: Path,
    process_index: int = 0,
    world_size: int = 1,
    engines: EnginePool | None = None,
    group: RankGroup | SoloGroup | None = None,
    summarize: bool = True,
    label: str | None = None,
) -> dict[str, Any] | None:
    """Run one measured job (or this process's rank of one) into ``run_dir``; return the summary dict.

    ``engines`` (a ``lem.launch.pool.EnginePool``) lends an engine already loaded by an
    earlier job with the same engine settings; its setup phases are then not measured again.
    ``group`` (a ``lem.launch.ranks.RankGroup``) places this process among the ranks of a
    sharded run; ``summarize=False`` leaves the summary to whoever waits for every rank.
    ``label`` ("job 2 of 6") heads the live progress lines, which process 0 shows on a terminal.
    """
    from lem.report.progress import reporter

    if world_size > 1:
        label = f"{label} · rank 0 of {world_size}" if label else f"rank 0 of {world_size}"
    # Closed before the summary is printed (stdout stays clean), and on errors and Ctrl-C (the cursor comes back).
    with reporter(cfg.report, label, show=process_index == 0) as progress:
        _run_phases(cfg, run_dir, process_index, world_size, engines, group, progress)
    return report_summary(cfg, run_dir) if summarize else None


def _run_phases(
    cfg: LemConfig,
    run_dir: Path,
    process_index: int,
    world_size: int,
    engines: EnginePool | None,
    group: RankGroup | SoloGroup | None,
    progress: Progress,
) -> None:
    """The phases of :func:`run_measurement`, each shown on ``progress`` as it runs."""
    from lem.measure.memory import PeakMemory
    from lem.models.resolve import resolve_model_path
    from lem.results.writer import RawWriter
    from lem.workload.prompts import load_prompts

    run_dir.mkdir(parents=True, exist_ok=True)

    # File and dataset problems surface before any model loads.
    progress.phase("prepare", "prompts and model files")
    prompts = None if cfg.dataset.source is DatasetSource.synthetic else load_prompts(cfg.dataset)
    # Convert/cache the embedded model (or find a hub model) before anything is measured, so a
    # first-run conversion is not counted as model loading.
    resolve_model_path(cfg.model)

    group = group if group is not None else SoloGroup()
    clock = PhaseClock()
    cuda_indices = measured_cuda_indices(cfg, group.local_rank)
    control = _apply_gpu_settings(cfg, cuda_indices)  # before the meter reads the GPUs and before any engine or model
    meter = _energy_meter(cfg.energy, cuda_indices, t0=clock.t0, host_meters=group.measures_host,
                          clocks_locked=cfg.gpu.locked_sm_clock_mhz is not None)
    meter.validity_windows = {"generation"}  # setup phases are short by nature: only generation's length matters
    memory = PeakMemory()
    memory.start()
    raw_path = run_dir / "raw" / f"process-{process_index}.jsonl"
    writer = RawWriter(raw_path)
    backend = None
    try:
        meter.start()
        # Setup: engine init and model load, unless an identical engine is already loaded. Then the
        # idle baseline, in one defined state for every job: engine up, model resident, power settled.
        backend, reused = engines.take(cfg) if engines is not None else (None, False)
        setup_windows = []
        idle_phase = IDLE_PHASE if meter.measures_idle else "warmup"
        if backend is None:
            backend = create_engine(cfg)  # the registry's adapter class for backend.name
            progress.phase("engine init", cfg.backend.name.value)
            meter.begin_window("engine_init", also=(RUN_WINDOW,))
            backend.init_engine()
            meter.end_window("engine_init", backend.synchronize, begin_next="model_load")
            progress.phase("model load", cfg.model.name_or_path)
            backend.load_model()
            meter.end_window("model_load", backend.synchronize, begin_next=idle_phase)
            setup_windows = [meter.closed("engine_init"), meter.closed("model_load")]
        else:
            meter.begin_window(idle_phase, also=(RUN_WINDOW,))
        meter.verify_devices()  # CUDA is up now: NVML's devices against torch's UUIDs
        if meter.measures_idle:
            e = cfg.energy
            progress.phase("idle baseline", f"power settling (up to {e.idle_settle_max_s:g} s), then {e.idle_baseline_s:g} s of idle")
        group.barrier()  # every rank idles together: no rank's warmup (or collective spin) runs on a measured device
        baseline = meter.measure_idle()  # state model_loaded (lem.measure.energy.baseline)
        group.barrier()
        if baseline is not None:
            meter.end_window(IDLE_PHASE, backend.synchronize, begin_next="warmup")
            setup_windows.append(meter.closed(IDLE_PHASE))

        _warn_unapplied_batching(cfg, backend)
        batching = effective_batching(cfg)  # batching=auto resolved for this engine
        description = backend.describe()
        description.extra["batching"] = {"strategy": batching.strategy.value, "batch_size": batching.batch_size, "max_tokens_per_batch": batching.max_tokens_per_batch}
        writer.open()
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
                engine_reused=reused,
                cuda_device_indices=cuda_indices,
                engine_settings=description.extra,
            )
        )
        if control is not None:
            writer.write(control.record())  # what was applied (restored: false until the run ends)
        if baseline is not None:
            writer.write(baseline)
        for window in setup_windows:
            writer.write(window.phase_record())
        _flush_samples(meter, writer)

        # Warmup (the window is open): tokenising the prompts is engine-independent and cheap;
        # the run's largest shapes are run, then more planned batches until power is steady.
        progress.phase("warmup", "tokenising prompts")
        if prompts is None:
            prompts = load_prompts(cfg.dataset, tokenizer=backend.tokenizer)
        from lem.workload.batching import plan_batches
        from lem.workload.prepare import prepare_requests
        from lem.workload.warmup import warm_up

        requests = prepare_requests(prompts, backend.tokenizer, cfg.model, cfg.dataset.max_input_tokens)
        requests = shard_requests(requests, cfg.sharding, group.rank, group.size)
        recording = records_requests(cfg.sharding, group.rank)
        params = generation_params(cfg)
        warmup = warm_up(
            backend,
            plan_batches(requests, batching, params.max_output_tokens),
            params,
            min_passes=cfg.run.warmup_batches,
            min_s=cfg.run.warmup_min_s,
            max_s=cfg.run.warmup_max_s,
            max_output_tokens=cfg.run.warmup_max_output_tokens,
            meter=meter,
            on_pass=lambda passes, elapsed_s: progress.note(
                f"pass {passes} · {elapsed_s:.0f} s (until power is steady, up to run.warmup_max_s={cfg.run.warmup_max_s:g} s)"
            ),
        )
        group.barrier()  # ranks start generating together, so their measured windows overlap
        meter.end_window("warmup", backend.synchronize, begin_next="generation")
        writer.write(meter.closed("warmup").phase_record())
        writer.write(warmup)

        records: list[RequestRecord] = []
        steps = StepLog("lem batches" if backend.scheduling == "batch" else "lem handovers")
        offsets_s = arrival_offsets_s(len(requests), cfg.traffic)
        progress.generation(len(requests) * cfg.cycles, cfg.cycles)
        cpu_start = host_load.snapshot()
        last_flush = clock.now_s()
        for cycle in range(cfg.cycles):
            for served in serve_open_loop(backend, requests, offsets_s, batching, params, clock, steps):
                for record in served:
                    record.cycle = cycle
                    if recording:
                        writer.write(record)
                        records.append(record)
                progress.served(len(served), sum(r.output_tokens for r in served), cycle)
                if clock.now_s() - last_flush >= SAMPLE_FLUSH_INTERVAL_S:
                    _flush_samples(meter, writer)
                    _flush_steps(steps, clock, writer, recording)
                    last_flush = clock.now_s()
            _flush_steps(steps, clock, writer, recording)
            group.barrier()  # the window closes when the slowest rank is done: host meters cover every rank
            last = cycle == cfg.cycles - 1
            cooldown = not last and cfg.run.cycle_cooldown_s > 0
            generation = meter.end_window(
                "generation",
                backend.synchronize,
                begin_next=None if last else ("cooldown" if cooldown else "generation"),
                also_end=(RUN_WINDOW,) if last else (),
            )
            writer.write(replace(generation.phase_record(), cycle=cycle))
            if cooldown:
                time.sleep(cfg.run.cycle_cooldown_s)
                window = meter.end_window("cooldown", lambda: None, begin_next="generation")
                writer.write(replace(window.phase_record(), cycle=cycle))
        cpu_end = host_load.snapshot()
        writer.write(meter.closed(RUN_WINDOW).window_record())
        if cfg.energy.idle_recheck_s > 0:
            progress.phase("idle recheck", f"{cfg.energy.idle_recheck_s:g} s of idle after generation")
        recheck = meter.recheck_idle(cfg.energy.idle_recheck_s)  # after the run window: drift is reported, not applied
        if recheck is not None:
            writer.write(recheck)
        meter.stop()
        if control is not None:  # after the idle recheck and the meter's last look at the GPUs' settings
            control.restore()
            writer.write(control.record())
        _flush_samples(meter, writer)
        writer.write(meter.record())
        writer.write(memory.stop())

        progress.phase("counting FLOPs", cfg.flops.strategy.value)
        writer.write(_count_flops(cfg, backend, description, records))
        writer.write(_end_record(clock.now_s(), cpu_start, cpu_end))
        keep_artefacts(backend, run_dir)
    except BaseException:
        keep_artefacts(backend, run_dir)  # a launched server's log says why it failed
        unload_quietly(backend)  # a failed job may leave the engine in a bad state: never lend it again
        raise
    finally:
        meter.stop()
        if control is not None:  # also after a failed or interrupted job (a killed one: lem.measure.gpu_restore)
            control.restore()
            control.close()
        if memory.record is None:
            memory.stop()
        writer.close()

    if engines is not None:
        engines.give_back(cfg, backend)
    else:
        unload_quietly(backend)


def _apply_gpu_settings(cfg: LemConfig, cuda_indices: list[int]) -> GpuControl | None:
    """Restore what a run that did not finish left on these GPUs, then apply ``gpu.*`` (refused in one line)."""
    from lem.measure import gpu_control

    g = cfg.gpu
    if g.power_limit_w is None and g.locked_sm_clock_mhz is None:
        if cuda_indices:
            gpu_control.restore_orphans(cuda_indices)
        return None
    return gpu_control.apply(cuda_indices, g.power_limit_w, g.locked_sm_clock_mhz)


def _end_record(end_s: float, start: host_load.CpuSnapshot, end: host_load.CpuSnapshot) -> EndRecord:
    """The end record, with the host's CPU load over generation (the summary's busy-host check)."""
    host_busy, lem_busy = host_load.busy_cores(start, end)
    return EndRecord(
        status="completed", end_s=end_s, cpu_count=os.cpu_count(), load_avg_1m_start=start.load_avg_1m,
        load_avg_1m_end=end.load_avg_1m, host_busy_cores=host_busy, lem_busy_cores=lem_busy,
    )


def _warn_unapplied_batching(cfg: LemConfig, backend: Any) -> None:
    b = cfg.batching
    if backend.scheduling == "serial" and (b.batch_size > 1 and b.strategy.value != "auto"):
        logging.getLogger("lem").warning(
            "lem: backend=%s serves one request at a time in arrival order; batching=%s with batch_size=%d is "
            "not applied (the run records one running request per step)",
            cfg.backend.name.value, b.strategy.value, b.batch_size,
        )


def report_summary(cfg: LemConfig, run_dir: Path) -> dict[str, Any]:
    """Compute ``summary.json`` from every raw record file of the run, print it, return it."""
    from lem.report.table import render_summary, terminal_width
    from lem.results.summarize import write_summary

    summary = write_summary(run_dir)
    if cfg.report.format is ReportFormat.json:
        print(json.dumps(summary, indent=1), flush=True)  # machine-readable: nothing else on stdout
    else:
        print(render_summary(summary, width=terminal_width()), flush=True)
        print(f"\nresults: {run_dir}", flush=True)
    return summary


def _flush_steps(steps: StepLog, clock: Any, writer: Any, recording: bool) -> None:
    record = steps.drain(clock.rel)
    if record is not None and recording:
        writer.write(record)


def _flush_samples(meter: Any, writer: Any) -> None:
    for record in meter.sample_records(new_only=True):
        writer.write(record)


def _count_flops(cfg: LemConfig, backend: Any, description: Any, records: list[RequestRecord]) -> FlopsRecord:
    """FLOPs of the generation phase, counted once outside the engine (strategy recorded)."""
    from lem.measure.flops import count_run_flops

    model = getattr(backend, "model", None) if description.engine == "pytorch" else None
    model_path = description.extra.get("model_path")
    config = None
    if model is None and model_path:
        try:  # engines whose model lem cannot see: the same analytical count from the checkpoint's config
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
        except Exception:  # noqa: BLE001 - then calflops from model_path, else 2 x params, as recorded in notes
            pass
    on_gpu = description.device_type == "cuda"
    compute_dtype = description.extra.get("compute_dtype") or description.dtype
    return count_run_flops(
        cfg.flops.strategy,
        records,
        model=model,
        config=config,
        model_path=model_path,
        trust_remote_code=cfg.model.trust_remote_code,
        kv_cache=bool(description.extra.get("use_cache", True)),
        # Every GPU the engine computes on (tensor x pipeline stages): MFU's peak is their sum.
        device_names=description.device_names if on_gpu else None,
        dtype=compute_dtype,  # the peak only on GPU (no device names on CPU); the model's bytes everywhere
        quantization=description.extra.get("quantization"),  # weight bytes: int8/int4 (PyTorch), fp8/awq/... (vLLM, TensorRT-LLM)
    )


def _energy_meter(
    energy_cfg: EnergyConfig, cuda_indices: list[int] | None, t0: float | None, host_meters: bool, clocks_locked: bool = False
) -> EnergyMeter:
    """The run's energy meter from ``cfg.energy``: every setting passed as a plain value. With locked clocks the
    idle baseline is measured, never taken from the cache: NVML cannot read a locked clock, so the cache cannot key on it."""
    from lem.measure.energy import EnergyMeter

    cc = energy_cfg.codecarbon
    return EnergyMeter.for_devices(
        cuda_indices,
        enabled=energy_cfg.enabled,
        nvml=energy_cfg.nvml,
        rapl=energy_cfg.rapl,
        codecarbon=cc.enabled,
        sample_interval_ms=energy_cfg.sample_interval_ms,
        idle_baseline_s=energy_cfg.idle_baseline_s,
        idle_baseline_cache_max_age_s=0.0 if clocks_locked else energy_cfg.idle_baseline_cache_max_age_s,
        idle_settle_max_s=energy_cfg.idle_settle_max_s,
        pue=energy_cfg.pue,
        carbon_intensity_g_per_kwh=energy_cfg.carbon_intensity_g_per_kwh,
        country_iso_code=cc.country_iso_code,
        region=cc.region,
        measure_power_secs=cc.measure_power_secs,
        tracking_mode=cc.tracking_mode,
        cpu_tdp_w=cc.cpu_tdp_w,
        ram_power_w=cc.ram_power_w,
        t0=t0,
        host_meters=host_meters,
    )
