"""The schema: every option of lem is a field of a dataclass here, one per config group.

Registered in Hydra's ConfigStore as the schema of the composed config (``lem_schema``), with
each engine's own dataclass (``lem.backends.<engine>.config``, listed in
``lem.backends.registry``) nested under ``backend.<engine>`` and registered as an option of the
``backend`` group. YAML under ``conf/`` holds only defaults lists and overlays. OmegaConf
enforces key names and types while Hydra composes; ``lem.config.checks`` adds ranges and
cross-field rules. Light: no torch, transformers or mlflow imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from enum import Enum
from typing import Any

from lem.backends.registry import ENGINE_NAMES, ENGINES
from lem.config.types import (
    EMBEDDED_MODEL,
    ArrivalProcess,
    BatchingStrategy,
    ChatTemplate,
    DatasetSource,
    Device,
    DType,
    FlopsStrategy,
    Isolation,
    LengthDistribution,
    Quantization,
    RecordTokenIds,
    ReportFormat,
    ReportProgress,
    ShardingStrategy,
    StudyOrder,
    StudyResume,
)

# backend=<name>: one option per registered engine.
BackendName = Enum("BackendName", [(name, name) for name in ENGINES], module=__name__, qualname="BackendName")

# backend.name, backend.device, and backend.<engine>.* for every registered engine (its own dataclass).
BackendConfig = make_dataclass(
    "BackendConfig",
    [
        ("name", BackendName, field(default=BackendName[ENGINE_NAMES[0]])),
        ("device", Device, field(default=Device.auto)),
        *((name, engine.config, field(default_factory=engine.config)) for name, engine in ENGINES.items()),
    ],
)
BackendConfig.__module__ = __name__  # so a LemConfig pickles into an engine worker (make_dataclass's module= is 3.12+)


@dataclass
class ModelConfig:
    # A Hugging Face model id, a local directory, or "embedded:smollm2-135m-instruct".
    name_or_path: str = EMBEDDED_MODEL
    revision: str | None = None
    trust_remote_code: bool = False
    chat_template: ChatTemplate = ChatTemplate.auto
    system_prompt: str | None = None


@dataclass
class SyntheticConfig:
    input_length_distribution: LengthDistribution = LengthDistribution.uniform
    input_tokens_mean: int = 128
    input_tokens_std: float = 32.0  # normal / lognormal only
    input_tokens_min: int = 16
    input_tokens_max: int = 256


@dataclass
class DatasetConfig:
    source: DatasetSource = DatasetSource.builtin
    path: str | None = None  # file: a .jsonl / .json / .csv file
    column: str = "prompt"  # file and hf: the field holding the prompt text
    hf_name: str | None = None  # hf: e.g. tatsu-lab/alpaca
    hf_config: str | None = None
    hf_split: str = "train"
    n_prompts: int = 64
    max_input_tokens: int = 512  # prompts longer than this are truncated, once, before any engine
    max_output_tokens: int = 64
    min_output_tokens: int = 0
    ignore_eos: bool = False  # generate exactly max_output_tokens for every request
    shuffle: bool = False
    seed: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class BatchingConfig:
    strategy: BatchingStrategy = BatchingStrategy.auto
    batch_size: int = 8  # requests per batch; continuous: the most in flight at once
    max_tokens_per_batch: int | None = None  # dynamic strategies and continuous: input + planned output tokens


@dataclass
class ShardingConfig:
    strategy: ShardingStrategy = ShardingStrategy.none
    num_shards: int = 1
    num_processes: int = 1

    @property
    def world_size(self) -> int:
        """How many processes the run needs (1 for none and pipeline parallel: one process drives the stages).

        For engines lem parallelises (PyTorch); ``lem.backends.registry.process_count`` gives the count for any engine.
        """
        if self.strategy is ShardingStrategy.data_parallel:
            return self.num_processes
        if self.strategy is ShardingStrategy.tensor_parallel:
            return self.num_shards
        return 1


@dataclass
class DecoderConfig:
    preset: str = "deterministic"
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    repetition_penalty: float = 1.0
    seed: int = 0


@dataclass
class TrafficConfig:
    arrival: ArrivalProcess = ArrivalProcess.offline
    target_qps: float | None = None
    burstiness: float = 1.0  # gamma shape; 1.0 is Poisson
    seed: int = 0


@dataclass
class PrecisionConfig:
    dtype: DType = DType.auto
    quantization: Quantization = Quantization.none


@dataclass
class CodeCarbonConfig:
    enabled: bool = True  # offline tracker: CPU/RAM estimate where no RAPL, and grid carbon intensity
    country_iso_code: str = "USA"  # grid carbon intensity used for CO2 (CodeCarbon's offline data)
    region: str | None = None  # e.g. "california"; finer grid data where CodeCarbon has it (USA, CAN, CHN, Nordics)
    measure_power_secs: float = 1.0  # how often the estimate is updated between window boundaries
    # "machine": whole-machine CPU load x TDP (CodeCarbon's default); "process": this process's
    # share of the CPUs x TDP (no idle floor), better on a shared machine.
    tracking_mode: str = "machine"
    cpu_tdp_w: float | None = None  # the CPU TDP for the estimate when CodeCarbon does not know the model
    ram_power_w: float | None = None  # RAM power for the estimate (default: CodeCarbon's model from RAM size)


@dataclass
class EnergyConfig:
    enabled: bool = True
    # Idle power, measured once the model is loaded and measured power has settled (state "model_loaded"); 0 disables.
    idle_baseline_s: float = 10.0
    idle_baseline_cache_max_age_s: float = 0.0  # reuse a cached baseline (same state, driver, power limit) younger than this; 0 never
    idle_settle_max_s: float = 30.0  # wait at most this long for measured power to settle before measuring idle
    idle_recheck_s: float = 0.0  # measure idle again after generation for this long and report drift; 0 disables
    sample_interval_ms: float = 100.0  # power/utilisation sampler period
    nvml: bool = True  # GPU energy counter and sampler (NVIDIA)
    rapl: bool = True  # CPU package / DRAM energy counters (/sys/class/powercap)
    pue: float = 1.0  # data-centre power usage effectiveness applied to CO2 and facility energy
    carbon_intensity_g_per_kwh: float | None = None  # overrides CodeCarbon's grid figure
    codecarbon: CodeCarbonConfig = field(default_factory=CodeCarbonConfig)


@dataclass
class FlopsConfig:
    strategy: FlopsStrategy = FlopsStrategy.auto


@dataclass
class GpuControlConfig:
    """NVIDIA GPU settings applied to every measured GPU before the model loads and restored after the run
    (also after a failed or killed run: lem.measure.gpu_control). None leaves the GPU as it is."""

    power_limit_w: float | None = None  # NVML power management limit (nvmlDeviceSetPowerManagementLimit), watts
    locked_sm_clock_mhz: int | None = None  # SM clock locked to this value (nvmlDeviceSetGpuLockedClocks min = max)


@dataclass
class SloConfig:
    """Latency objectives for goodput (vLLM's definition): a request is good when it meets every objective set.
    None: no objective on that latency."""

    ttft_ms: float | None = None  # time to first token (arrival → first token, queueing included), ms
    tpot_ms: float | None = None  # time per output token after the first, ms


@dataclass
class HardwareConfig:
    """The device's limits for the physical floor where lem's table has none (CPUs, unlisted GPUs).
    None: use lem's device table (lem.measure.device_specs); the floor is null where neither knows."""

    peak_tflops: float | None = None  # dense peak of all devices the run computes on, at the run's compute dtype, TFLOP/s
    memory_bandwidth_gb_per_s: float | None = None  # peak memory bandwidth of those devices, GB/s (1e9 bytes)
    power_w: float | None = None  # the power those devices may draw at most (TDP or power limit), W


@dataclass
class TrackingConfig:
    enabled: bool = True
    # None: sqlite under <project>/mlruns/ (MLFLOW_TRACKING_URI, when set, wins).
    tracking_uri: str | None = None
    experiment_name: str = "lem"


@dataclass
class ReportConfig:
    format: ReportFormat = ReportFormat.table
    progress: ReportProgress = ReportProgress.auto  # live phase and generation progress on stderr (lem.report.progress)


@dataclass
class RunConfig:
    # Warmup (lem.workload.warmup): the run's largest shapes first, then passes until measured power is steady.
    warmup_batches: int = 1  # at least this many passes (0: no warmup, a cold start)
    warmup_max_output_tokens: int | None = None  # output length of warmup passes; None: the run's own (sizes compiled caches)
    warmup_min_s: float = 0.0  # warm up at least this long
    warmup_max_s: float = 60.0  # stop warming up after this long even if power is still moving (recorded as not steady)
    seed: int = 0
    # Consecutive jobs of one process (a sweep) whose engine settings match share a loaded engine.
    reuse_engine: bool = True
    cycle_cooldown_s: float = 0.0  # pause between measured cycles (cycles > 1), e.g. to let a GPU cool
    isolation: Isolation = Isolation.worker
    # CUDA jobs lease whole GPUs through machine-wide lock files (lem.gpu_lease): two measured jobs never
    # share a GPU, whatever launcher or shell started them; a job waits while its GPUs are taken.
    gpu_lease: bool = True
    gpu_lease_timeout_s: float | None = None  # None: wait as long as it takes
    # A job still running after this many seconds in its engine worker (imports, model load and generation
    # included) fails: the worker's process group is killed and error.txt names the phase it hung in. None: no limit.
    job_timeout_s: float | None = None
    # Output token ids in every request record (token accounting and determinism checkable from the records).
    # auto: on when dataset.n_prompts x cycles x dataset.max_output_tokens <= 1,000,000 tokens (lem.workload.serve).
    record_token_ids: RecordTokenIds = RecordTokenIds.auto


@dataclass
class StudyConfig:
    """How a ``-m`` sweep runs as a study (lem.study): its order, the pauses between runs, resuming, when to stop.
    A single run ignores it; nothing here changes what a run measures, so it is not part of a run's identity."""

    order: StudyOrder = StudyOrder.grouped
    seed: int = 0  # the shuffled and latin_square orders are drawn from this seed
    gap_s: float = 0.0  # pause before each run of another configuration (not in any measured phase)
    cycle_gap_s: float = 0.0  # pause between rounds of cycles (grouped: between a job's cycles, as run.cycle_cooldown_s)
    # Before each run, wait until every device's power and temperature are back within a band of the idle
    # baseline measured when the study started (NVML GPUs, RAPL, temperature sensors), at most idle_timeout_s.
    wait_for_idle: bool = False
    idle_baseline_s: float = 10.0  # how long the study's idle baseline is measured, before its first run
    idle_power_band_pct: float = 10.0  # "idle": power at most this much above the baseline (and idle_power_band_w)
    idle_power_band_w: float = 5.0  # the smallest power band, W (a few watts of noise on a low idle)
    idle_temp_band_c: float = 3.0  # "idle": temperature at most this many degrees C above the baseline
    idle_timeout_s: float = 600.0  # wait at most this long, then run anyway (recorded as not reached)
    # Stop the study after this many runs in a row failed (0: never); the rest stay pending and a resume runs them.
    max_consecutive_failures: int = 3
    resume: StudyResume = StudyResume.auto


@dataclass
class LemConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    flops: FlopsConfig = field(default_factory=FlopsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    gpu: GpuControlConfig = field(default_factory=GpuControlConfig)
    slo: SloConfig = field(default_factory=SloConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    # The measured generation phase runs this many times on the loaded engine; the summary gives
    # each headline metric's mean, standard deviation and 95 % confidence interval over cycles.
    cycles: int = 1


def register_schema() -> None:
    """Register the schema (``conf/config.yaml`` names it first) and one ``backend`` option per engine."""
    from hydra.core.config_store import ConfigStore

    from lem.config.presets import register_resolvers

    register_resolvers()
    store = ConfigStore.instance()
    store.store(name="lem_schema", node=LemConfig)
    for name, engine in ENGINES.items():
        store.store(group="backend", name=name, node={"name": name})
        for preset, node in engine.presets.items():  # e.g. backend=vllm_server: backend=openai with a preset
            store.store(group="backend", name=preset, node=node)


def to_dataclass(cfg: Any) -> LemConfig:
    """Turn a composed DictConfig into the typed ``LemConfig`` (enums included)."""
    from omegaconf import DictConfig, OmegaConf

    from lem.config.presets import register_resolvers

    register_resolvers()  # a launcher's worker process may resolve a config composed elsewhere
    # Through a plain container: drops Hydra's open-dict flags (so a ``+key`` is still
    # checked against the schema) and raises on a ``???`` left unset.
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if isinstance(cfg, DictConfig) else cfg
    plain = {k: v for k, v in plain.items() if k != "hydra"}
    merged = OmegaConf.merge(OmegaConf.structured(LemConfig), plain)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
