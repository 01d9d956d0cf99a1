"""Validation: one ``check_<group>`` per config group, run in order by ``validate``.

Ranges, combinations, files and packages are checked before any model loads; each problem is
one ``ConfigError`` line naming the key, the value and what is allowed. Each engine's own
checks live beside its config (``lem.backends.<engine>.config``) and run from
``check_backend``. No heavy import: CUDA is asked of torch only when the config asks for it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

from lem.backends.registry import ENGINES, scheduling
from lem.config.rules import (
    at_least,
    in_range,
    nvidia_gpu_present,
    require_cuda,
    require_package,
    resolve_device,
)
from lem.config.schema import LemConfig
from lem.config.types import (
    EMBEDDED_MODEL,
    ArrivalProcess,
    BatchingStrategy,
    DatasetSource,
    Device,
    DType,
    Quantization,
    ShardingStrategy,
)
from lem.errors import ConfigError

log = logging.getLogger(__name__)


def validate(cfg: LemConfig) -> list[str]:
    """Check the whole config; raise ConfigError on the first problem.

    Then read what the config points at (the prompt file, the model's config.json: ``lem.config.inputs``).
    Returns the warnings about settings that run but may surprise (also logged, once each).
    """
    from lem.config.inputs import check_inputs

    for check in (check_numbers, check_dataset, check_batching, check_decoder, check_traffic, check_sharding, check_energy, check_run, check_study, check_backend, check_precision, check_gpu, check_model):
        check(cfg)
    warnings = check_inputs(cfg)
    for warning in warnings:
        log.warning(warning)
    return warnings


def check_numbers(cfg: LemConfig) -> None:
    """No nan or ±inf anywhere (an engine's passthrough arguments included): no key means one."""
    for key, value in _leaves(cfg, ""):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, value, "a finite number")


def _leaves(node: Any, prefix: str) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(node):
        items = [(f.name, getattr(node, f.name)) for f in dataclasses.fields(node)]
    elif isinstance(node, dict):
        items = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, (list, tuple)):
        items = [(f"[{i}]", v) for i, v in enumerate(node)]
    else:
        return [(prefix, node)]
    found: list[tuple[str, Any]] = []
    for name, value in items:
        found += _leaves(value, f"{prefix}{name}" if name.startswith("[") or not prefix else f"{prefix}.{name}")
    return found


def check_dataset(cfg: LemConfig) -> None:
    ds = cfg.dataset
    at_least("dataset.n_prompts", ds.n_prompts, 1)
    at_least("dataset.max_input_tokens", ds.max_input_tokens, 1)
    at_least("dataset.max_output_tokens", ds.max_output_tokens, 1)
    at_least("dataset.min_output_tokens", ds.min_output_tokens, 0)
    if ds.min_output_tokens > ds.max_output_tokens:
        raise ConfigError("dataset.min_output_tokens", ds.min_output_tokens, f"at most dataset.max_output_tokens ({ds.max_output_tokens})")
    if ds.source is DatasetSource.file:
        if not ds.path:
            raise ConfigError("dataset.path", ds.path, "a .jsonl, .json or .csv file when dataset.source=file")
        if not os.path.isfile(ds.path):
            raise ConfigError("dataset.path", ds.path, "an existing .jsonl, .json or .csv file")
        if not ds.path.lower().endswith((".jsonl", ".json", ".csv")):
            raise ConfigError("dataset.path", ds.path, "a file ending in .jsonl, .json or .csv")
    if ds.source is DatasetSource.hf:
        if not ds.hf_name:
            raise ConfigError("dataset.hf_name", ds.hf_name, "a dataset name such as tatsu-lab/alpaca when dataset.source=hf")
        require_package("dataset.source", "hf", "datasets", "pip install datasets")
    if ds.source is DatasetSource.synthetic:
        syn = ds.synthetic
        at_least("dataset.synthetic.input_tokens_min", syn.input_tokens_min, 1)
        at_least("dataset.synthetic.input_tokens_mean", syn.input_tokens_mean, 1)
        at_least("dataset.synthetic.input_tokens_std", syn.input_tokens_std, 0)
        if syn.input_tokens_max < syn.input_tokens_min:
            raise ConfigError("dataset.synthetic.input_tokens_max", syn.input_tokens_max, f"at least dataset.synthetic.input_tokens_min ({syn.input_tokens_min})")
        if syn.input_tokens_min > ds.max_input_tokens:
            raise ConfigError("dataset.synthetic.input_tokens_min", syn.input_tokens_min, f"at most dataset.max_input_tokens ({ds.max_input_tokens})")


def check_batching(cfg: LemConfig) -> None:
    b, ds = cfg.batching, cfg.dataset
    at_least("batching.batch_size", b.batch_size, 1)
    budgeted = (BatchingStrategy.dynamic, BatchingStrategy.sorted_dynamic, BatchingStrategy.continuous)
    if b.strategy in budgeted:
        if b.strategy is not BatchingStrategy.continuous or b.max_tokens_per_batch is not None:
            at_least("batching.max_tokens_per_batch", b.max_tokens_per_batch, 1)
        if b.max_tokens_per_batch is not None and b.max_tokens_per_batch < ds.max_output_tokens + 1:
            raise ConfigError(
                "batching.max_tokens_per_batch", b.max_tokens_per_batch,
                f"room for at least one request: >= max_output_tokens + 1 ({ds.max_output_tokens + 1})",
            )
    elif b.max_tokens_per_batch is not None:
        raise ConfigError("batching.max_tokens_per_batch", b.max_tokens_per_batch, "null unless batching.strategy is dynamic, sorted_dynamic or continuous")
    if b.strategy is BatchingStrategy.continuous and scheduling(cfg.backend.name.value) == "batch":
        raise ConfigError(
            "batching.strategy", "continuous",
            f"auto, static, sorted_static, dynamic or sorted_dynamic with backend={cfg.backend.name.value} "
            "(lem forms its batches; continuous needs an engine that schedules requests itself, e.g. backend=vllm)",
        )


def check_decoder(cfg: LemConfig) -> None:
    d = cfg.decoder
    in_range("decoder.temperature", d.temperature, 0.0, 100.0, low_open=d.do_sample)
    in_range("decoder.top_p", d.top_p, 0.0, 1.0, low_open=True)
    at_least("decoder.top_k", d.top_k, 0)
    in_range("decoder.repetition_penalty", d.repetition_penalty, 0.0, 100.0, low_open=True)


def check_traffic(cfg: LemConfig) -> None:
    t = cfg.traffic
    if t.arrival is ArrivalProcess.offline:
        if t.target_qps is not None:
            raise ConfigError("traffic.target_qps", t.target_qps, "null when traffic.arrival=offline")
    elif t.target_qps is None or t.target_qps <= 0:
        raise ConfigError("traffic.target_qps", t.target_qps, f"a rate > 0 requests/s when traffic.arrival={t.arrival.value}")
    in_range("traffic.burstiness", t.burstiness, 0.0, 1000.0, low_open=True)


def check_sharding(cfg: LemConfig) -> None:
    """The engine-independent part; how an engine spreads over devices is checked with the engine."""
    s = cfg.sharding
    at_least("sharding.num_shards", s.num_shards, 1)
    at_least("sharding.num_processes", s.num_processes, 1)
    if s.strategy is ShardingStrategy.none and (s.num_shards != 1 or s.num_processes != 1):
        raise ConfigError("sharding.strategy", s.strategy.value, "tensor_parallel, pipeline_parallel or data_parallel when num_shards or num_processes > 1")


def check_energy(cfg: LemConfig) -> None:
    e = cfg.energy
    at_least("energy.idle_baseline_s", e.idle_baseline_s, 0)
    at_least("energy.idle_baseline_cache_max_age_s", e.idle_baseline_cache_max_age_s, 0)
    at_least("energy.idle_settle_max_s", e.idle_settle_max_s, 0)
    at_least("energy.idle_recheck_s", e.idle_recheck_s, 0)
    in_range("energy.sample_interval_ms", e.sample_interval_ms, 1.0, 60_000.0)
    in_range("energy.pue", e.pue, 1.0, 5.0)
    if e.carbon_intensity_g_per_kwh is not None:
        at_least("energy.carbon_intensity_g_per_kwh", e.carbon_intensity_g_per_kwh, 0)
    cc = e.codecarbon
    in_range("energy.codecarbon.measure_power_secs", cc.measure_power_secs, 0.1, 3600.0)
    if cc.tracking_mode not in ("machine", "process"):
        raise ConfigError("energy.codecarbon.tracking_mode", cc.tracking_mode, "machine or process")
    if cc.cpu_tdp_w is not None:
        in_range("energy.codecarbon.cpu_tdp_w", cc.cpu_tdp_w, 0.0, 10_000.0, low_open=True)
    if cc.ram_power_w is not None:
        in_range("energy.codecarbon.ram_power_w", cc.ram_power_w, 0.0, 10_000.0)
    if not cc.country_iso_code.isalpha() or len(cc.country_iso_code) != 3:
        raise ConfigError("energy.codecarbon.country_iso_code", cc.country_iso_code, "a 3-letter ISO 3166 country code such as USA, FRA, DEU")
    # Latency objectives for goodput and the device limits for the physical floor: positive where set.
    for key, value, high in (
        ("slo.ttft_ms", cfg.slo.ttft_ms, 86_400_000.0), ("slo.tpot_ms", cfg.slo.tpot_ms, 3_600_000.0),
        ("hardware.peak_tflops", cfg.hardware.peak_tflops, 1e6), ("hardware.memory_bandwidth_gb_per_s", cfg.hardware.memory_bandwidth_gb_per_s, 1e6),
        ("hardware.power_w", cfg.hardware.power_w, 1e6),
    ):
        if value is not None:
            in_range(key, value, 0.0, high, low_open=True)


def check_run(cfg: LemConfig) -> None:
    r = cfg.run
    at_least("cycles", cfg.cycles, 1)
    at_least("run.cycle_cooldown_s", r.cycle_cooldown_s, 0)
    at_least("run.warmup_batches", r.warmup_batches, 0)
    if r.warmup_max_output_tokens is not None:
        at_least("run.warmup_max_output_tokens", r.warmup_max_output_tokens, 1)
    at_least("run.warmup_min_s", r.warmup_min_s, 0)
    at_least("run.warmup_max_s", r.warmup_max_s, 0)
    if r.warmup_min_s > r.warmup_max_s:
        raise ConfigError("run.warmup_min_s", r.warmup_min_s, f"a duration <= run.warmup_max_s={r.warmup_max_s:g}")
    if r.job_timeout_s is not None:
        in_range("run.job_timeout_s", r.job_timeout_s, 0.0, 30 * 86_400.0, low_open=True)


def check_study(cfg: LemConfig) -> None:
    s = cfg.study
    for key in ("gap_s", "cycle_gap_s", "idle_baseline_s", "idle_power_band_pct", "idle_power_band_w", "idle_temp_band_c"):
        in_range(f"study.{key}", getattr(s, key), 0.0, 7 * 86_400.0)
    in_range("study.idle_timeout_s", s.idle_timeout_s, 0.0, 7 * 86_400.0, low_open=True)
    at_least("study.max_consecutive_failures", s.max_consecutive_failures, 0)
    if s.wait_for_idle and s.idle_baseline_s <= 0:
        raise ConfigError("study.idle_baseline_s", s.idle_baseline_s, "a duration > 0 with study.wait_for_idle=true (the band is around it)")


def check_backend(cfg: LemConfig) -> None:
    """The chosen engine's own checks (its knobs, and what it can run: sharding, precision, devices)."""
    ENGINES[cfg.backend.name.value].check(cfg)


def check_precision(cfg: LemConfig) -> None:
    p, device = cfg.precision, cfg.backend.device
    if p.quantization is not Quantization.none:
        if resolve_device(device) is Device.cpu:
            raise ConfigError("precision.quantization", p.quantization.value, "none on backend.device=cpu (bitsandbytes 8/4-bit needs CUDA)")
        require_package("precision.quantization", p.quantization.value, "bitsandbytes", "pip install bitsandbytes")
        if p.dtype is DType.float32:
            raise ConfigError("precision.dtype", p.dtype.value, "float16, bfloat16 or auto with quantized weights")
    if p.dtype is DType.float16 and resolve_device(device) is Device.cpu:
        raise ConfigError("precision.dtype", "float16", "float32, bfloat16 or auto on a CPU (no CUDA GPU here; CPU float16 matmuls are emulated)")
    if device is Device.cuda:
        require_cuda("backend.device", "cuda")


def check_gpu(cfg: LemConfig) -> None:
    """NVIDIA settings need a CUDA run: refused on a CPU run or a machine without a GPU, before anything starts.
    What the GPU itself allows (the power limit range, permission, support) is asked of NVML when the job starts."""
    g = cfg.gpu
    if g.power_limit_w is not None:
        in_range("gpu.power_limit_w", g.power_limit_w, 0.0, 10_000.0, low_open=True)
    if g.locked_sm_clock_mhz is not None:
        in_range("gpu.locked_sm_clock_mhz", g.locked_sm_clock_mhz, 0, 10_000, low_open=True)
    key, value = ("gpu.power_limit_w", g.power_limit_w) if g.power_limit_w is not None else ("gpu.locked_sm_clock_mhz", g.locked_sm_clock_mhz)
    if value is None:
        return
    device = cfg.backend.device
    if device is Device.cpu:
        raise ConfigError(key, value, "null with backend.device=cpu (an NVIDIA GPU setting: run with backend.device=cuda, or leave it unset)")
    if not nvidia_gpu_present() or resolve_device(device) is Device.cpu:
        raise ConfigError(key, value, "null on this machine: no NVIDIA GPU visible to torch, so the run is on the CPU (an NVIDIA GPU setting)")
    require_cuda(key, value)


def check_model(cfg: LemConfig) -> None:
    name = cfg.model.name_or_path
    if not name.strip():
        raise ConfigError("model.name_or_path", "", f"a Hugging Face model id, a local model directory or {EMBEDDED_MODEL}")
    if name.startswith("embedded:") and name != EMBEDDED_MODEL:
        raise ConfigError("model.name_or_path", name, f"{EMBEDDED_MODEL}, a Hugging Face model id or a local path")
    if name.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(name)):
        raise ConfigError("model.name_or_path", name, "an existing local model directory, a Hugging Face model id or " + EMBEDDED_MODEL)
