"""The raw record format, version ``lem.raw/1`` (documented in docs/records.md).

A run writes one JSON-lines file per process, ``raw/process-<index>.jsonl``. Each line is
one self-contained JSON object with a ``kind``; lines are appended and flushed as events
complete, so a killed run leaves every finished line readable. Nothing is aggregated in
place: the summary is computed later from these lines (``lem.results.aggregate``).

All times are seconds on one monotonic clock (``time.perf_counter``) relative to the
process's ``t0``; the header maps ``t0`` to wall-clock time (``t0_unix_s``).
Measurements that nothing took are ``null`` with ``source: null`` — never 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

RAW_SCHEMA_VERSION = "lem.raw/1"
SUMMARY_SCHEMA_VERSION = "lem.summary/1"

PhaseName = Literal["engine_init", "model_load", "idle_baseline", "warmup", "generation", "cooldown"]
# idle_baseline: waiting for power to settle and measuring idle, with the model loaded (energy.idle_baseline_s > 0).
# cooldown: the pause between measured cycles (cycles > 1), measured so the phases still add up to the run.
PHASE_ORDER: tuple[str, ...] = ("engine_init", "model_load", "idle_baseline", "warmup", "generation", "cooldown")

# Where a figure came from. None means nothing measured it (the value is null too).
EnergySource = Literal["counter", "sampled", "rapl", "estimated"]

# NVML throttle reasons (as lem names them in records) that mean the GPU ran slower than it could.
THROTTLING = frozenset(
    {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "board_limit", "reliability"}
)


@dataclass
class HeaderRecord:
    process_index: int
    world_size: int
    t0_unix_s: float  # wall-clock time (time.time()) at t0
    hostname: str
    pid: int
    lem_version: str
    device_type: str  # "cpu" | "cuda"
    device_names: list[str]  # e.g. ["NVIDIA H100 80GB HBM3"] or ["Intel Xeon ..."]
    engine: str  # backend name
    engine_version: str  # e.g. "transformers 5.23.0, torch 2.13.0+cpu"
    model: str
    dtype: str  # the dtype the weights were actually loaded in
    num_threads: int | None  # torch intra-op threads actually in force (CPU)
    engine_reused: bool = False  # the engine was loaded by an earlier job: no engine_init/model_load phases here
    cuda_device_indices: list[int] = field(default_factory=list)  # CUDA devices (torch numbering) the meter watched
    engine_settings: dict[str, Any] = field(default_factory=dict)  # what the engine runs with (attention, compile, parameters, ...)
    schema_version: str = RAW_SCHEMA_VERSION
    kind: str = "header"


@dataclass
class EnergyReading:
    """Energy of one window (phase) on one device/component, filled by ``lem.measure.energy``."""

    device: str  # e.g. "cuda:0", "cpu-package-0", "dram-0", "cpu", "ram", "system"
    component: str  # "gpu" | "cpu" | "dram" | "system" (system: a whole-machine figure that already contains the others)
    energy_j: float | None = None  # gross: everything the device drew in the window
    source: EnergySource | None = None
    # Net of idle: energy_j - idle_power_w x window duration (can be slightly negative: noise).
    # None when no idle baseline covers this device.
    net_energy_j: float | None = None
    idle_power_w: float | None = None  # the baseline's mean power used for net_energy_j
    idle_power_std_w: float | None = None  # the baseline's spread (sample standard deviation)
    # Power samples integrated over the window (trapezoidal): the primary figure when source is
    # "sampled", a cross-check beside a counter otherwise; None when no power was sampled.
    sampled_energy_j: float | None = None
    n_samples: int | None = None  # power samples inside the window (boundaries included)
    throttle_reasons: list[str] | None = None  # GPU clock-event reasons seen in the window (NVML), [] none
    other_pids: list[int] | None = None  # other processes seen on this GPU during the window, [] none
    # The physical device behind the reading: NVML GPU UUID, RAPL sysfs zone, CodeCarbon model id.
    # Late aggregation uses it to prove each physical device is counted once across processes.
    device_id: str | None = None
    # One standard error of the idle mean power x window duration: net_energy_j is known to +- this
    # (the idle baseline's sampling error only; the counter's own error is not included). None without a baseline.
    net_energy_uncertainty_j: float | None = None


@dataclass
class IdlePower:
    """Idle power of one device/component, measured before the engine starts."""

    device: str
    component: str
    mean_power_w: float  # window energy / duration (counter, RAPL, estimate or integrated samples)
    std_power_w: float | None  # sample standard deviation of the power readings in the window
    n_samples: int  # power readings behind std_power_w
    source: EnergySource
    device_id: str | None = None  # the physical device (see EnergyReading.device_id)

    @property
    def std_error_w(self) -> float | None:
        """Standard error of the mean idle power (std / sqrt(n)); None below two samples."""
        return self.std_power_w / self.n_samples**0.5 if self.std_power_w is not None and self.n_samples >= 2 else None


@dataclass
class IdleBaselineRecord:
    """The idle baseline subtracted from every window's gross energy (one per process)."""

    duration_s: float
    measured_unix_s: float  # when it was measured (older than this run when cached)
    cached: bool  # reused from the user cache (energy.idle_baseline_cache_max_age_s) instead of measured now
    power: list[IdlePower] = field(default_factory=list)
    start_s: float | None = None  # on this process's clock; None when cached
    end_s: float | None = None
    # The state the devices were in (IDLE_STATES in lem.measure.energy.baseline): "model_loaded" is
    # lem's one defined state (engine up, weights resident, nothing running, power settled).
    state: str = "model_loaded"
    # "before_warmup": the baseline every window is net of; "after_generation": a re-measurement
    # (energy.idle_recheck_s) that only reports drift.
    when: str = "before_warmup"
    settle_s: float | None = None  # waited for power to settle before measuring (None: cached)
    settled: bool | None = None  # power steady before measuring; None: no measured power to settle on (or cached)
    # Per device: what the baseline depends on besides the device itself (driver, enforced power limit).
    device_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    kind: str = "idle_baseline"


@dataclass
class WarmupRecord:
    """What warmup did before the measured generation: shapes run, passes, and whether power settled."""

    passes: int  # generate() calls, each a batch of requests
    requests: int  # requests served in those passes
    largest_batch_size: int  # the largest batch the run will use (run at least once)
    largest_input_tokens: int  # its longest prompt: the widest input the run will use
    max_output_tokens: int  # output length of the largest-shape pass (the run's own unless run.warmup_max_output_tokens caps it)
    duration_s: float
    stable: bool | None  # power/clocks steady between the last two spans; None: no measured power (minimum passes/duration only)
    criterion: str  # how warmup decided to stop, in words
    power_w_by_span: list[float | None] = field(default_factory=list)  # total measured power of each compared span
    kind: str = "warmup"


@dataclass
class EnergyWindowRecord:
    """A measured window that is not one of the phases, e.g. ``run`` (all phases and the gaps between them)."""

    name: str
    start_s: float
    end_s: float
    energy: list[EnergyReading] = field(default_factory=list)
    kind: str = "energy_window"


@dataclass
class PowerSamplesRecord:
    """The power/utilisation timeline of one device, columnar (one list per field, aligned on t_s).

    ``energy_j`` is the device's cumulative counter since the meter started (null where the
    counter was not read at that row), so the energy of any sub-window can be recomputed late.
    The GPU columns are null (not lists) for devices that have no such reading.
    """

    device: str
    component: str
    power_kind: str | None  # "instant" (NVML field), "power_usage" (nvmlDeviceGetPowerUsage: 1 s average on Ampere+), "counter_delta"
    source: EnergySource | None  # what energy_j counts: "counter", "rapl", "estimated", or None
    t_s: list[float] = field(default_factory=list)
    power_w: list[float | None] = field(default_factory=list)
    energy_j: list[float | None] = field(default_factory=list)
    sm_util_pct: list[float | None] | None = None
    mem_util_pct: list[float | None] | None = None
    sm_clock_mhz: list[float | None] | None = None
    mem_clock_mhz: list[float | None] | None = None
    temp_c: list[float | None] | None = None
    throttle_reasons: list[int | None] | None = None  # NVML clock-event reason bit mask
    kind: str = "power_samples"


@dataclass
class EngineStepsRecord:
    """What the engine actually batched, step by step, during generation; columnar, aligned on t_s.

    One row per engine step (vLLM: one scheduler iteration, from its scheduler stats), or per
    served unit for engines that lem batches itself: PyTorch one row per batch standing for
    ``steps`` decoding steps at that batch size; llama.cpp one row per request (running 1).
    ``waiting`` is the queue at that row: requests the engine holds but does not run (vLLM), or
    that have arrived and wait for lem to hand them over (the others).
    """

    source: str  # "vllm scheduler stats" | "lem batches" | "lem serial" | ...
    t_s: list[float] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # engine steps the row stands for (1 per row for vLLM)
    kind: str = "engine_steps"


@dataclass
class EnergyMeterRecord:
    """How energy was measured in this process: devices, sources, carbon intensity, overhead, validity warnings."""

    channels: list[dict[str, Any]]  # {device, component, source, power_kind, name, notes}
    notes: list[str]  # sources tried and why they were not used
    sample_interval_s: float
    carbon_intensity_g_per_kwh: float | None
    carbon_intensity_source: str | None
    pue: float
    codecarbon: dict[str, Any] | None  # version, cpu_model, cpu_tdp_w, tdp_basis, ram_power_w, overhead
    sampler_cpu_s: float | None  # CPU time of the sampler thread
    sampler_wall_s: float | None
    warnings: list[str] = field(default_factory=list)
    kind: str = "energy_meter"


@dataclass
class PhaseRecord:
    name: str  # one of PHASE_ORDER
    start_s: float
    end_s: float
    energy: list[EnergyReading] = field(default_factory=list)  # empty: nothing measured
    cycle: int | None = None  # generation and cooldown: which measured cycle (0-based); None for setup phases
    kind: str = "phase"

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class RequestRecord:
    request_id: int  # index of the prompt in the workload, stable across engines
    batch_id: int | None  # which measured batch served it; None for engines that schedule continuously
    batch_size: int | None  # requests in that batch; None for engines that schedule continuously
    input_tokens: int  # prompt tokens after chat template and truncation (no padding)
    output_tokens: int  # real generated tokens: up to and including EOS, no padding
    arrival_s: float  # when the request became available (offline traffic: the generation phase start)
    start_s: float  # when the engine started serving it (its batch started)
    first_token_s: float | None  # when its first output token was available; None if it produced none
    end_s: float  # when its last output token was available
    token_times_s: list[float]  # availability time of every output token (len == output_tokens)
    finish_reason: str  # "stop" (EOS) | "length" (hit max_output_tokens)
    padded_input_tokens: int | None = None  # input length the engine actually processed, padding included
    cycle: int = 0  # which measured cycle served it (cycles > 1 repeat every request)
    truncated: bool = False  # dataset.max_input_tokens cut its prompt (lem.workload.prepare)
    # The output tokens lem counted (len == output_tokens, EOS included); None when run.record_token_ids is off.
    output_token_ids: list[int] | None = None
    kind: str = "request"


@dataclass
class MemoryRecord:
    peak_rss_bytes: int | None
    cuda_peak_allocated_bytes: list[int] | None = None  # per visible CUDA device
    cuda_peak_reserved_bytes: list[int] | None = None
    source: str = "psutil+torch.cuda"
    kind: str = "memory"


@dataclass
class FlopsRecord:
    """FLOPs of the measured generation phase. Filled by the FLOPs layer (issue 3)."""

    total_flops: float | None = None  # executed: padding and finished rows of a padded batch included (headline)
    source: str | None = None  # "calflops" | "analytical" | "2x_params" | None
    useful_flops: float | None = None  # each request alone, unpadded, KV cache on (MFU's numerator)
    prefill_flops: float | None = None  # executed, prefill forwards
    decode_flops: float | None = None  # executed, decode forwards
    strategy: str | None = None  # the strategy asked for (flops.strategy); source says which one counted
    calflops_vs_analytical: float | None = None  # calflops / analytical for one prefill forward, when both ran
    peak_flops_per_s: float | None = None  # dense peak summed over n_devices for the compute dtype; None on CPU/unknown GPU
    notes: list[str] = field(default_factory=list)  # why a strategy was skipped, cross-checks, caveats
    useful_prefill_flops: float | None = None  # useful, prefill forwards (each request alone, unpadded)
    useful_decode_flops: float | None = None  # useful, decode forwards
    n_devices: int | None = None  # GPUs this process's engine computes on (tensor x pipeline stages); None on CPU
    peak_flops_per_s_per_device: float | None = None  # one device's dense peak; None when unknown or the GPUs differ
    forward_cost: dict[str, float] | None = None  # the chosen ForwardCost: {"per_token_flops", "per_query_key_flops", "per_logit_flops"}
    n_params: int | None = None  # parameters of the model (from the loaded model, else from its config's shape)
    weight_bytes: float | None = None  # bytes of weights one forward reads (an untied input-embedding table excluded), at the run's dtype/quantization
    kv_cache_bytes_per_token: float | None = None  # K and V of one token, all layers, at the compute dtype (None without the shape)
    kind: str = "flops"


@dataclass
class EndRecord:
    status: str  # "completed"
    end_s: float
    # The host's CPUs over the generation window (first cycle's start to last cycle's end; lem.measure.host_load).
    # All None in records written before these fields existed, or where the platform does not tell.
    cpu_count: int | None = None  # os.cpu_count() of the host
    load_avg_1m_start: float | None = None  # 1-minute load average when generation started
    load_avg_1m_end: float | None = None  # ... and when it ended
    host_busy_cores: float | None = None  # mean CPU cores busy on the whole host during generation
    lem_busy_cores: float | None = None  # mean CPU cores busy in this process and its children (the engine's)
    kind: str = "end"


@dataclass
class GpuControlDevice:
    """One GPU whose settings lem changed for the run (``GpuControlRecord.devices``)."""

    device: str  # "cuda:N" (torch numbering), as in the energy readings
    uuid: str  # the physical GPU (NVML "GPU-...")
    name: str | None = None  # e.g. "NVIDIA H100 80GB HBM3"
    power_limit_w: float | None = None  # requested (gpu.power_limit_w); None: the limit was not changed
    power_limit_before_w: float | None = None  # NVML power management limit before the run (restored after it)
    enforced_power_limit_w: float | None = None  # nvmlDeviceGetEnforcedPowerLimit right after setting
    power_limit_range_w: list[float] | None = None  # [min, max] NVML allows (nvmlDeviceGetPowerManagementLimitConstraints)
    locked_sm_clock_mhz: int | None = None  # requested (gpu.locked_sm_clock_mhz); None: clocks not locked
    sm_clock_mhz_after: float | None = None  # SM clock read right after locking (NVML cannot read locked clocks back)
    restored: bool = False  # previous limit set again and locked clocks reset
    notes: list[str] = field(default_factory=list)  # what NVML adjusted or refused


@dataclass
class GpuControlRecord:
    """NVIDIA GPU settings lem applied for the run (``gpu.*``): written once applied (restored false) and
    again once restored after the run; the last one of a process is what happened."""

    power_limit_w: float | None  # gpu.power_limit_w, W
    locked_sm_clock_mhz: int | None  # gpu.locked_sm_clock_mhz, MHz
    devices: list[GpuControlDevice] = field(default_factory=list)
    restored: bool = False  # every device restored
    notes: list[str] = field(default_factory=list)  # e.g. settings a run that did not finish left, restored first
    kind: str = "gpu_control"


def to_json_dict(record: Any) -> dict[str, Any]:
    return asdict(record)
