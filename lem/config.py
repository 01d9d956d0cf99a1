"""The one place lem's options are defined.

Every option is a field of a dataclass below, registered in Hydra's ConfigStore as
the schema of the composed config. YAML under ``conf/`` holds only defaults lists and
overrides. OmegaConf enforces key names and types while Hydra composes; ``validate``
adds ranges and cross-field rules. Both report through ``ConfigError`` — one line
naming the key, the value and what is allowed — before any model loads.

This module must stay light: no torch, transformers or mlflow imports.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lem.errors import ConfigError

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(Enum):
    auto = "auto"  # the checkpoint's natural dtype
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Quantization(Enum):
    none = "none"
    int8 = "int8"  # bitsandbytes 8-bit, CUDA only
    int4 = "int4"  # bitsandbytes 4-bit NF4, CUDA only


class AttnImplementation(Enum):
    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"


class DatasetSource(Enum):
    builtin = "builtin"
    file = "file"
    hf = "hf"
    synthetic = "synthetic"


class LengthDistribution(Enum):
    fixed = "fixed"
    uniform = "uniform"
    normal = "normal"
    lognormal = "lognormal"


class BatchingStrategy(Enum):
    static = "static"
    sorted_static = "sorted_static"
    dynamic = "dynamic"
    sorted_dynamic = "sorted_dynamic"


class ShardingStrategy(Enum):
    none = "none"
    tensor_parallel = "tensor_parallel"
    pipeline_parallel = "pipeline_parallel"
    data_parallel = "data_parallel"


class ArrivalProcess(Enum):
    offline = "offline"
    constant = "constant"
    poisson = "poisson"


class ChatTemplate(Enum):
    auto = "auto"  # apply the tokenizer's template when it has one
    on = "on"  # apply it, fail when the tokenizer has none
    off = "off"  # feed the raw prompt text


class BackendName(Enum):
    pytorch = "pytorch"
    vllm = "vllm"
    tensorrt = "tensorrt"
    llama_cpp = "llama_cpp"


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
class PyTorchBackendConfig:
    attn_implementation: AttnImplementation = AttnImplementation.sdpa
    use_cache: bool = True
    torch_compile: bool = False
    # None: torch's default; on a shared CPU set it explicitly for repeatable numbers.
    num_threads: int | None = None


@dataclass
class VllmBackendConfig:
    """vLLM engine arguments (``vllm.EngineArgs``); None leaves vLLM's own default."""

    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None  # None: dataset.max_input_tokens + dataset.max_output_tokens
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool | None = None
    enforce_eager: bool = False
    kv_cache_dtype: str = "auto"
    quantization: str | None = None  # e.g. awq, gptq, fp8 (vLLM's names)
    speculative_config: dict[str, Any] | None = None  # vLLM's speculative_config dict, passed as is
    tensor_parallel_size: int | None = None  # None: from sharding
    pipeline_parallel_size: int | None = None  # None: from sharding
    engine_args: dict[str, Any] = field(default_factory=dict)  # any other EngineArgs field, passed through


class TensorRTRuntime(Enum):
    pytorch = "pytorch"  # tensorrt_llm.LLM: TensorRT-LLM 1.x's default PyTorch runtime
    trt_engine = "trt_engine"  # tensorrt_llm._tensorrt_engine.LLM: builds a TensorRT engine (BuildConfig, QuantConfig)


@dataclass
class TensorRTBackendConfig:
    """TensorRT-LLM ``LLM`` API arguments; None leaves TensorRT-LLM's own default."""

    runtime: TensorRTRuntime = TensorRTRuntime.pytorch
    max_batch_size: int | None = None
    max_input_len: int | None = None  # None: dataset.max_input_tokens
    max_seq_len: int | None = None  # None: dataset.max_input_tokens + dataset.max_output_tokens
    max_num_tokens: int | None = None
    kv_cache_free_gpu_memory_fraction: float = 0.9
    tensor_parallel_size: int | None = None  # None: from sharding
    pipeline_parallel_size: int | None = None  # None: from sharding
    quantization: str | None = None  # a QuantAlgo name, e.g. FP8, W4A16_AWQ
    llm_args: dict[str, Any] = field(default_factory=dict)  # any other LLM(...) argument, passed through


@dataclass
class LlamaCppBackendConfig:
    """llama-cpp-python ``Llama(...)`` arguments."""

    model_path: str | None = None  # a GGUF file; None: the embedded model's GGUF
    n_threads: int | None = None  # None: llama.cpp's default
    n_batch: int = 512
    n_ctx: int | None = None  # None: dataset.max_input_tokens + dataset.max_output_tokens
    n_gpu_layers: int = 0
    flash_attn: bool = False
    llama_args: dict[str, Any] = field(default_factory=dict)  # any other Llama(...) argument, passed through


@dataclass
class BackendConfig:
    name: BackendName = BackendName.pytorch
    device: Device = Device.auto
    pytorch: PyTorchBackendConfig = field(default_factory=PyTorchBackendConfig)
    vllm: VllmBackendConfig = field(default_factory=VllmBackendConfig)
    tensorrt: TensorRTBackendConfig = field(default_factory=TensorRTBackendConfig)
    llama_cpp: LlamaCppBackendConfig = field(default_factory=LlamaCppBackendConfig)


@dataclass
class BatchingConfig:
    strategy: BatchingStrategy = BatchingStrategy.static
    batch_size: int = 8
    max_tokens_per_batch: int | None = None  # dynamic strategies: input + planned output tokens


@dataclass
class ShardingConfig:
    strategy: ShardingStrategy = ShardingStrategy.none
    num_shards: int = 1
    num_processes: int = 1


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
    idle_baseline_s: float = 10.0  # idle power measured before the engine starts; 0 disables
    idle_baseline_cache_max_age_s: float = 0.0  # reuse a cached baseline younger than this; 0 never
    sample_interval_ms: float = 100.0  # power/utilisation sampler period
    nvml: bool = True  # GPU energy counter and sampler (NVIDIA)
    rapl: bool = True  # CPU package / DRAM energy counters (/sys/class/powercap)
    pue: float = 1.0  # data-centre power usage effectiveness applied to CO2 and facility energy
    carbon_intensity_g_per_kwh: float | None = None  # overrides CodeCarbon's grid figure
    codecarbon: CodeCarbonConfig = field(default_factory=CodeCarbonConfig)


class FlopsStrategy(Enum):
    auto = "auto"  # calflops, else analytical, else 2 x params x tokens
    calflops = "calflops"
    analytical = "analytical"
    params = "params"  # 2 x parameters x tokens
    off = "off"


@dataclass
class FlopsConfig:
    strategy: FlopsStrategy = FlopsStrategy.auto


@dataclass
class TrackingConfig:
    enabled: bool = True
    # None: sqlite under <project>/mlruns/ (MLFLOW_TRACKING_URI, when set, wins).
    tracking_uri: str | None = None
    experiment_name: str = "lem"


class Isolation(Enum):
    worker = "worker"  # the engine runs in a spawned child process: a crash ends the worker, not the sweep
    inline = "inline"  # in the launching process (debugging: one process, breakpoints work)


class ReportFormat(Enum):
    table = "table"  # the aligned text table
    json = "json"  # summary.json on stdout, for scripts (the table is not printed)


@dataclass
class ReportConfig:
    format: ReportFormat = ReportFormat.table


@dataclass
class RunConfig:
    warmup_batches: int = 1  # generation passes run and discarded before measuring
    warmup_max_output_tokens: int = 8
    seed: int = 0
    # Consecutive jobs of one process (a sweep) whose engine settings match share a loaded engine.
    reuse_engine: bool = True
    cycle_cooldown_s: float = 0.0  # pause between measured cycles (cycles > 1), e.g. to let a GPU cool
    isolation: Isolation = Isolation.worker
    # CUDA jobs lease whole GPUs through machine-wide lock files (lem.gpu_lease): two measured jobs never
    # share a GPU, whatever launcher or shell started them; a job waits while its GPUs are taken.
    gpu_lease: bool = True
    gpu_lease_timeout_s: float | None = None  # None: wait as long as it takes


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
    # The measured generation phase runs this many times on the loaded engine; the summary gives
    # each headline metric's mean, standard deviation and 95 % confidence interval over cycles.
    cycles: int = 1


def register_schema() -> None:
    """Register the schema so ``conf/config.yaml`` can name it first in its defaults list."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="lem_schema", node=LemConfig)


def to_dataclass(cfg: Any) -> LemConfig:
    """Turn a composed DictConfig into the typed ``LemConfig`` (enums included)."""
    from omegaconf import DictConfig, OmegaConf

    # Through a plain container: drops Hydra's open-dict flags (so a ``+key`` is still
    # checked against the schema) and raises on a ``???`` left unset.
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if isinstance(cfg, DictConfig) else cfg
    plain = {k: v for k, v in plain.items() if k != "hydra"}
    merged = OmegaConf.merge(OmegaConf.structured(LemConfig), plain)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _at_least(key: str, value: float | int | None, minimum: float | int) -> None:
    if value is None or value < minimum:
        raise ConfigError(key, value, f"a number >= {minimum}")


def _in_range(key: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(key, value, f"a number in {bracket}{low}, {high}]")


def _require_package(key: str, value: Any, module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(key, value, f"the '{module}' package, which is not installed ({install})")


def validate(cfg: LemConfig) -> None:
    """Check ranges, combinations, files and packages; raise ConfigError on the first problem.

    Runs before any model loads, and imports no heavy library: CUDA availability is
    asked of torch only when the config asks for CUDA explicitly.
    """
    ds = cfg.dataset
    _at_least("dataset.n_prompts", ds.n_prompts, 1)
    _at_least("dataset.max_input_tokens", ds.max_input_tokens, 1)
    _at_least("dataset.max_output_tokens", ds.max_output_tokens, 1)
    _at_least("dataset.min_output_tokens", ds.min_output_tokens, 0)
    if ds.min_output_tokens > ds.max_output_tokens:
        raise ConfigError(
            "dataset.min_output_tokens",
            ds.min_output_tokens,
            f"at most dataset.max_output_tokens ({ds.max_output_tokens})",
        )
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
        _require_package("dataset.source", "hf", "datasets", "pip install datasets")
    if ds.source is DatasetSource.synthetic:
        syn = ds.synthetic
        _at_least("dataset.synthetic.input_tokens_min", syn.input_tokens_min, 1)
        _at_least("dataset.synthetic.input_tokens_mean", syn.input_tokens_mean, 1)
        _at_least("dataset.synthetic.input_tokens_std", syn.input_tokens_std, 0)
        if syn.input_tokens_max < syn.input_tokens_min:
            raise ConfigError(
                "dataset.synthetic.input_tokens_max",
                syn.input_tokens_max,
                f"at least dataset.synthetic.input_tokens_min ({syn.input_tokens_min})",
            )
        if syn.input_tokens_min > ds.max_input_tokens:
            raise ConfigError(
                "dataset.synthetic.input_tokens_min",
                syn.input_tokens_min,
                f"at most dataset.max_input_tokens ({ds.max_input_tokens})",
            )

    b = cfg.batching
    _at_least("batching.batch_size", b.batch_size, 1)
    dynamic = b.strategy in (BatchingStrategy.dynamic, BatchingStrategy.sorted_dynamic)
    if dynamic:
        _at_least("batching.max_tokens_per_batch", b.max_tokens_per_batch, 1)
        if b.max_tokens_per_batch is not None and b.max_tokens_per_batch < ds.max_output_tokens + 1:
            raise ConfigError(
                "batching.max_tokens_per_batch",
                b.max_tokens_per_batch,
                f"room for at least one request: >= max_output_tokens + 1 ({ds.max_output_tokens + 1})",
            )
    elif b.max_tokens_per_batch is not None:
        raise ConfigError(
            "batching.max_tokens_per_batch",
            b.max_tokens_per_batch,
            "null unless batching.strategy is dynamic or sorted_dynamic",
        )

    d = cfg.decoder
    _in_range("decoder.temperature", d.temperature, 0.0, 100.0, low_open=d.do_sample)
    _in_range("decoder.top_p", d.top_p, 0.0, 1.0, low_open=True)
    _at_least("decoder.top_k", d.top_k, 0)
    _in_range("decoder.repetition_penalty", d.repetition_penalty, 0.0, 100.0, low_open=True)

    t = cfg.traffic
    if t.arrival is ArrivalProcess.offline:
        if t.target_qps is not None:
            raise ConfigError("traffic.target_qps", t.target_qps, "null when traffic.arrival=offline")
    else:
        if t.target_qps is None or t.target_qps <= 0:
            raise ConfigError("traffic.target_qps", t.target_qps, f"a rate > 0 requests/s when traffic.arrival={t.arrival.value}")
    _in_range("traffic.burstiness", t.burstiness, 0.0, 1000.0, low_open=True)

    s = cfg.sharding
    _at_least("sharding.num_shards", s.num_shards, 1)
    _at_least("sharding.num_processes", s.num_processes, 1)
    if s.strategy is ShardingStrategy.none and (s.num_shards != 1 or s.num_processes != 1):
        raise ConfigError("sharding.strategy", s.strategy.value, "tensor_parallel, pipeline_parallel or data_parallel when num_shards or num_processes > 1")
    if cfg.backend.name is BackendName.pytorch:
        _validate_pytorch_sharding(cfg)

    e = cfg.energy
    _at_least("energy.idle_baseline_s", e.idle_baseline_s, 0)
    _at_least("energy.idle_baseline_cache_max_age_s", e.idle_baseline_cache_max_age_s, 0)
    _in_range("energy.sample_interval_ms", e.sample_interval_ms, 1.0, 60_000.0)
    _in_range("energy.pue", e.pue, 1.0, 5.0)
    if e.carbon_intensity_g_per_kwh is not None:
        _at_least("energy.carbon_intensity_g_per_kwh", e.carbon_intensity_g_per_kwh, 0)
    _in_range("energy.codecarbon.measure_power_secs", e.codecarbon.measure_power_secs, 0.1, 3600.0)
    if e.codecarbon.tracking_mode not in ("machine", "process"):
        raise ConfigError("energy.codecarbon.tracking_mode", e.codecarbon.tracking_mode, "machine or process")
    if e.codecarbon.cpu_tdp_w is not None:
        _in_range("energy.codecarbon.cpu_tdp_w", e.codecarbon.cpu_tdp_w, 0.0, 10_000.0, low_open=True)
    if e.codecarbon.ram_power_w is not None:
        _in_range("energy.codecarbon.ram_power_w", e.codecarbon.ram_power_w, 0.0, 10_000.0)
    if not e.codecarbon.country_iso_code.isalpha() or len(e.codecarbon.country_iso_code) != 3:
        raise ConfigError("energy.codecarbon.country_iso_code", e.codecarbon.country_iso_code, "a 3-letter ISO 3166 country code such as USA, FRA, DEU")

    r = cfg.run
    _at_least("cycles", cfg.cycles, 1)
    _at_least("run.cycle_cooldown_s", r.cycle_cooldown_s, 0)
    _at_least("run.warmup_batches", r.warmup_batches, 0)
    _at_least("run.warmup_max_output_tokens", r.warmup_max_output_tokens, 1)

    be = cfg.backend
    if be.name is BackendName.vllm:
        _validate_vllm(cfg)
    elif be.name is BackendName.tensorrt:
        _validate_tensorrt(cfg)
    elif be.name is BackendName.llama_cpp:
        _validate_llama_cpp(cfg)
    pt = be.pytorch
    if pt.num_threads is not None:
        _at_least("backend.pytorch.num_threads", pt.num_threads, 1)
    if pt.attn_implementation is AttnImplementation.flash_attention_2:
        if be.device is Device.cpu:
            raise ConfigError("backend.pytorch.attn_implementation", "flash_attention_2", "sdpa or eager on backend.device=cpu")
        _require_package("backend.pytorch.attn_implementation", "flash_attention_2", "flash_attn", "pip install flash-attn")
    if pt.torch_compile and be.device is Device.cpu:
        pass  # torch.compile works on CPU; it needs a C++ compiler, which the install provides

    p = cfg.precision
    if p.quantization is not Quantization.none:
        if resolve_device(be.device) is Device.cpu:
            raise ConfigError("precision.quantization", p.quantization.value, "none on backend.device=cpu (bitsandbytes 8/4-bit needs CUDA)")
        _require_package("precision.quantization", p.quantization.value, "bitsandbytes", "pip install bitsandbytes")
        if p.dtype is DType.float32:
            raise ConfigError("precision.dtype", p.dtype.value, "float16, bfloat16 or auto with quantized weights")
    if p.dtype is DType.float16 and resolve_device(be.device) is Device.cpu:
        raise ConfigError("precision.dtype", "float16", "float32, bfloat16 or auto on a CPU (no CUDA GPU here; CPU float16 matmuls are emulated)")
    if be.device is Device.cuda:
        _require_cuda("backend.device", "cuda")

    if not cfg.model.name_or_path.strip():
        raise ConfigError("model.name_or_path", "", f"a Hugging Face model id, a local model directory or {EMBEDDED_MODEL}")
    if cfg.model.name_or_path.startswith("embedded:") and cfg.model.name_or_path != EMBEDDED_MODEL:
        raise ConfigError("model.name_or_path", cfg.model.name_or_path, f"{EMBEDDED_MODEL}, a Hugging Face model id or a local path")
    if cfg.model.name_or_path.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(cfg.model.name_or_path)):
        raise ConfigError("model.name_or_path", cfg.model.name_or_path, "an existing local model directory, a Hugging Face model id or " + EMBEDDED_MODEL)


VLLM_INSTALL = 'pip install -e ".[vllm]" on a CUDA machine'
TENSORRT_INSTALL = "pip install tensorrt_llm --extra-index-url https://pypi.nvidia.com on a CUDA machine"

# Engine arguments lem sets itself, and the option that sets them: a passthrough may not override them.
_VLLM_OWNED_ARGS = {
    "model": "model.name_or_path",
    "tokenizer": "model.name_or_path",
    "revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code",
    "dtype": "precision.dtype",
    "seed": "run.seed",
    "tensor_parallel_size": "sharding.* or backend.vllm.tensor_parallel_size",
    "pipeline_parallel_size": "sharding.* or backend.vllm.pipeline_parallel_size",
    "data_parallel_size": "nothing (data parallelism is not implemented for vLLM)",
    **{
        name: f"backend.vllm.{name}"
        for name in (
            "gpu_memory_utilization", "max_model_len", "max_num_seqs", "max_num_batched_tokens",
            "enable_prefix_caching", "enforce_eager", "kv_cache_dtype", "quantization", "speculative_config",
        )
    },
}
_TENSORRT_OWNED_ARGS = {
    "model": "model.name_or_path",
    "tokenizer": "model.name_or_path",
    "revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code",
    "dtype": "precision.dtype",
    "backend": "backend.tensorrt.runtime",
    "tensor_parallel_size": "sharding.* or backend.tensorrt.tensor_parallel_size",
    "pipeline_parallel_size": "sharding.* or backend.tensorrt.pipeline_parallel_size",
    "quant_config": "backend.tensorrt.quantization",
    **{name: f"backend.tensorrt.{name}" for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens")},
}
# Nested dicts the TensorRT-LLM passthrough may hold, minus the keys lem sets inside them.
_TENSORRT_OWNED_NESTED = {
    "kv_cache_config": {"free_gpu_memory_fraction": "backend.tensorrt.kv_cache_free_gpu_memory_fraction"},
    "build_config": {name: f"backend.tensorrt.{name}" for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens")},
}


def engine_parallel_sizes(cfg: LemConfig, engine: str) -> tuple[int, int]:
    """(tensor, pipeline) parallel sizes for backend=vllm/tensorrt, checked against sharding.*.

    sharding.strategy/num_shards decide them; backend.<engine>.*_parallel_size may set them
    explicitly (e.g. a tp x pp split), but their product must equal sharding.num_shards, which
    is also how many GPUs the energy meter watches.
    """
    s = cfg.sharding
    sub = getattr(cfg.backend, engine)
    if s.strategy is ShardingStrategy.data_parallel or s.num_processes != 1:
        raise ConfigError(
            "sharding.strategy", s.strategy.value,
            f"none, tensor_parallel or pipeline_parallel with backend={engine} (data parallelism is not implemented for this engine)",
        )
    tp = s.num_shards if s.strategy is ShardingStrategy.tensor_parallel else 1
    pp = s.num_shards if s.strategy is ShardingStrategy.pipeline_parallel else 1
    if sub.tensor_parallel_size is not None:
        _at_least(f"backend.{engine}.tensor_parallel_size", sub.tensor_parallel_size, 1)
        tp = sub.tensor_parallel_size
    if sub.pipeline_parallel_size is not None:
        _at_least(f"backend.{engine}.pipeline_parallel_size", sub.pipeline_parallel_size, 1)
        pp = sub.pipeline_parallel_size
    if tp * pp != s.num_shards:
        name = "tensor_parallel_size" if sub.tensor_parallel_size is not None else "pipeline_parallel_size"
        raise ConfigError(
            f"backend.{engine}.{name}", getattr(sub, name),
            f"tensor_parallel_size x pipeline_parallel_size = sharding.num_shards ({s.num_shards}); "
            "set sharding.strategy and sharding.num_shards to match, so the energy meter watches every GPU the engine uses",
        )
    return tp, pp


def _validate_engine_common(cfg: LemConfig, engine: str, quantization_hint: str) -> tuple[int, int]:
    """Checks shared by the GPU serving engines (vLLM, TensorRT-LLM); returns (tp, pp)."""
    if cfg.backend.device is Device.cpu:
        raise ConfigError("backend.device", "cpu", f"auto or cuda with backend={engine} (it runs on NVIDIA GPUs only)")
    quant = cfg.precision.quantization
    if quant is not Quantization.none:
        # precision.quantization means bitsandbytes in Transformers; each engine has its own methods.
        raise ConfigError("precision.quantization", quant.value, f"none with backend={engine} (bitsandbytes is a PyTorch option); use {quantization_hint}")
    return engine_parallel_sizes(cfg, engine)


def _check_passthrough(key: str, passthrough: dict[str, Any], owned: dict[str, str]) -> None:
    for name, value in passthrough.items():
        if name in owned:
            raise ConfigError(f"{key}.{name}", value, f"no value here: lem sets it from {owned[name]}")


def _require_gpus(engine: str, n_gpus: int) -> None:
    import torch  # only reached for the GPU engines, after every config-only check passed

    if not torch.cuda.is_available():
        raise ConfigError("backend.name", engine, "a machine with a CUDA GPU visible to torch (none found); use backend=pytorch here")
    available = torch.cuda.device_count()
    if n_gpus > available:
        raise ConfigError("sharding.num_shards", n_gpus, f"at most {available}, the number of CUDA GPUs visible here")


def _validate_pytorch_sharding(cfg: LemConfig) -> None:
    """How the PyTorch backend spreads a run over devices (lem.distributed launches the processes)."""
    s = cfg.sharding
    if s.strategy is ShardingStrategy.data_parallel:
        if s.num_processes < 2:
            raise ConfigError("sharding.num_processes", s.num_processes, "a number >= 2 replicas with sharding.strategy=data_parallel")
        if s.num_shards != 1:
            raise ConfigError("sharding.num_shards", s.num_shards, "1 with data_parallel (each replica holds the whole model)")
        if cfg.dataset.n_prompts < s.num_processes:
            raise ConfigError("dataset.n_prompts", cfg.dataset.n_prompts, f"at least one prompt per replica (>= {s.num_processes})")
        needed = s.num_processes
    elif s.strategy in (ShardingStrategy.tensor_parallel, ShardingStrategy.pipeline_parallel):
        if s.num_shards < 2:
            raise ConfigError("sharding.num_shards", s.num_shards, f"a number >= 2 devices with sharding.strategy={s.strategy.value}")
        if s.num_processes != 1:
            raise ConfigError(
                "sharding.num_processes", s.num_processes, f"1 with {s.strategy.value} (data parallel over sharded replicas is not supported)"
            )
        if cfg.precision.quantization is not Quantization.none:
            raise ConfigError("precision.quantization", cfg.precision.quantization.value, f"none with sharding.strategy={s.strategy.value}")
        needed = s.num_shards
    else:
        return
    on_cuda = resolve_device(cfg.backend.device) is Device.cuda
    if s.strategy is ShardingStrategy.pipeline_parallel and not on_cuda:
        raise ConfigError("sharding.strategy", "pipeline_parallel", "tensor_parallel or data_parallel on a CPU (pipeline parallel splits layers over CUDA GPUs)")
    if on_cuda:
        import torch

        if torch.cuda.device_count() < needed:
            raise ConfigError(f"sharding.{'num_processes' if s.strategy is ShardingStrategy.data_parallel else 'num_shards'}", needed, f"at most the {torch.cuda.device_count()} CUDA GPU(s) visible here")


def _validate_vllm(cfg: LemConfig) -> None:
    v = cfg.backend.vllm
    tp_pp = _validate_engine_common(cfg, "vllm", "backend.vllm.quantization (vLLM's own methods: awq, gptq, fp8, bitsandbytes, ...)")
    _in_range("backend.vllm.gpu_memory_utilization", v.gpu_memory_utilization, 0.0, 1.0, low_open=True)
    for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
        if getattr(v, name) is not None:
            _at_least(f"backend.vllm.{name}", getattr(v, name), 1)
    need = cfg.dataset.max_input_tokens + cfg.dataset.max_output_tokens
    if v.max_model_len is not None and v.max_model_len < need:
        # A shorter context would cut requests short of max_output_tokens: unequal terms across engines.
        raise ConfigError("backend.vllm.max_model_len", v.max_model_len, f"at least dataset.max_input_tokens + dataset.max_output_tokens ({need})")
    if cfg.decoder.do_sample and cfg.decoder.temperature > 2.0:
        raise ConfigError("decoder.temperature", cfg.decoder.temperature, "a number in (0.0, 2.0] with backend=vllm (vLLM's limit)")
    _check_passthrough("backend.vllm.engine_args", v.engine_args, _VLLM_OWNED_ARGS)
    _require_package("backend.name", "vllm", "vllm", VLLM_INSTALL)
    _require_gpus("vllm", tp_pp[0] * tp_pp[1])


def _validate_tensorrt(cfg: LemConfig) -> None:
    t = cfg.backend.tensorrt
    tp_pp = _validate_engine_common(
        cfg, "tensorrt", "backend.tensorrt.quantization (a TensorRT-LLM QuantAlgo name such as FP8 or W4A16_AWQ, with backend.tensorrt.runtime=trt_engine)"
    )
    _in_range("backend.tensorrt.kv_cache_free_gpu_memory_fraction", t.kv_cache_free_gpu_memory_fraction, 0.0, 1.0, low_open=True)
    for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens"):
        if getattr(t, name) is not None:
            _at_least(f"backend.tensorrt.{name}", getattr(t, name), 1)
    ds = cfg.dataset
    if t.max_input_len is not None and t.max_input_len < ds.max_input_tokens:
        raise ConfigError("backend.tensorrt.max_input_len", t.max_input_len, f"at least dataset.max_input_tokens ({ds.max_input_tokens})")
    need = ds.max_input_tokens + ds.max_output_tokens
    if t.max_seq_len is not None and t.max_seq_len < need:
        raise ConfigError("backend.tensorrt.max_seq_len", t.max_seq_len, f"at least dataset.max_input_tokens + dataset.max_output_tokens ({need})")
    if t.quantization is not None:
        if not t.quantization.strip():
            raise ConfigError("backend.tensorrt.quantization", t.quantization, "null or a QuantAlgo name such as FP8 or W4A16_AWQ")
        if t.runtime is TensorRTRuntime.pytorch:
            raise ConfigError(
                "backend.tensorrt.quantization", t.quantization,
                "null with backend.tensorrt.runtime=pytorch (that runtime takes quantisation from the checkpoint, "
                "e.g. a ModelOpt FP8 model); set backend.tensorrt.runtime=trt_engine to build a quantised TensorRT engine",
            )
    _check_passthrough("backend.tensorrt.llm_args", t.llm_args, _TENSORRT_OWNED_ARGS)
    for nested, owned in _TENSORRT_OWNED_NESTED.items():
        value = t.llm_args.get(nested)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"backend.tensorrt.llm_args.{nested}", value, "a mapping of its fields (lem builds the object)")
        _check_passthrough(f"backend.tensorrt.llm_args.{nested}", value or {}, owned)
    if "build_config" in t.llm_args and t.runtime is TensorRTRuntime.pytorch:
        raise ConfigError("backend.tensorrt.llm_args.build_config", t.llm_args["build_config"], "nothing with backend.tensorrt.runtime=pytorch (a BuildConfig is for trt_engine)")
    _require_package("backend.name", "tensorrt", "tensorrt_llm", TENSORRT_INSTALL)
    _require_gpus("tensorrt", tp_pp[0] * tp_pp[1])


def _validate_llama_cpp(cfg: LemConfig) -> None:
    lc, ds, p = cfg.backend.llama_cpp, cfg.dataset, cfg.precision
    if cfg.sharding.strategy is not ShardingStrategy.none:
        raise ConfigError("sharding.strategy", cfg.sharding.strategy.value, "none with backend=llama_cpp (one process on one device; n_gpu_layers offloads to one GPU)")
    if lc.model_path is None:
        if cfg.model.name_or_path != EMBEDDED_MODEL:
            raise ConfigError("backend.llama_cpp.model_path", None, f"a .gguf file of model.name_or_path={cfg.model.name_or_path} (only {EMBEDDED_MODEL} has a default GGUF)")
    else:
        path = os.path.expanduser(lc.model_path)
        if not path.lower().endswith(".gguf") or not os.path.isfile(path):
            raise ConfigError("backend.llama_cpp.model_path", lc.model_path, "an existing .gguf file")
        if cfg.model.name_or_path == EMBEDDED_MODEL and not _is_embedded_gguf(path):
            # The tokenizer, chat template, FLOPs and the run's model name come from model.name_or_path.
            raise ConfigError("model.name_or_path", EMBEDDED_MODEL, f"the model in {lc.model_path}: its Hugging Face id or directory, or the directory holding the .gguf")
    if lc.n_threads is not None:
        _at_least("backend.llama_cpp.n_threads", lc.n_threads, 1)
    _at_least("backend.llama_cpp.n_batch", lc.n_batch, 1)
    needed = ds.max_input_tokens + ds.max_output_tokens
    if lc.n_ctx is not None and lc.n_ctx < needed:
        raise ConfigError("backend.llama_cpp.n_ctx", lc.n_ctx, f"at least dataset.max_input_tokens + dataset.max_output_tokens ({needed}), or null for exactly that")
    _at_least("backend.llama_cpp.n_gpu_layers", lc.n_gpu_layers, -1)
    if lc.n_gpu_layers != 0:
        if cfg.backend.device is Device.cpu:
            raise ConfigError("backend.llama_cpp.n_gpu_layers", lc.n_gpu_layers, "0 on backend.device=cpu")
        if not _nvidia_gpu_present():
            raise ConfigError("backend.llama_cpp.n_gpu_layers", lc.n_gpu_layers, "0 on a machine without an NVIDIA GPU (llama.cpp offloads layers to CUDA only)")
    elif cfg.backend.device is Device.cuda:
        raise ConfigError("backend.device", "cuda", "cpu or auto while backend.llama_cpp.n_gpu_layers=0; offload to the GPU with backend.llama_cpp.n_gpu_layers=-1")
    for key in ("model_path", "n_threads", "n_batch", "n_ctx", "n_gpu_layers", "flash_attn"):
        if key in lc.llama_args:
            raise ConfigError(f"backend.llama_cpp.llama_args.{key}", lc.llama_args[key], f"no value here: set backend.llama_cpp.{key}")
    if p.quantization is not Quantization.none:
        raise ConfigError("precision.quantization", p.quantization.value, "none with backend=llama_cpp: a GGUF carries its own quantisation (pick another .gguf, e.g. a Q8_0 file)")
    if p.dtype is not DType.auto:
        raise ConfigError("precision.dtype", p.dtype.value, "auto with backend=llama_cpp: a GGUF's tensors keep the types they were stored in (pick another .gguf, e.g. an F16 file)")
    # Last, so the settings are checked even where the package is not installed yet.
    _require_package("backend.name", "llama_cpp", "llama_cpp", 'pip install -e ".[llamacpp]": it compiles llama.cpp, about 9 minutes on 2 cores')


def _nvidia_gpu_present() -> bool:
    gpus = "/proc/driver/nvidia/gpus"  # no torch import: llama.cpp runs without it
    return os.path.exists("/dev/nvidia0") or (os.path.isdir(gpus) and bool(os.listdir(gpus)))


def _is_embedded_gguf(path: str) -> bool:
    from lem.errors import LemError
    from lem.models.embedded import find_embedded_gguf  # standard library only: cheap

    try:
        return os.path.samefile(path, find_embedded_gguf().gguf_path)
    except (LemError, OSError):
        return False


def resolve_device(device: Device) -> Device:
    """auto → cuda when torch sees a GPU, else cpu (imports torch only for auto)."""
    if device is not Device.auto:
        return device
    import torch

    return Device.cuda if torch.cuda.is_available() else Device.cpu


def _require_cuda(key: str, value: Any) -> None:
    import torch  # only reached when the config explicitly asks for CUDA

    if not torch.cuda.is_available():
        raise ConfigError(key, value, "a machine with a CUDA GPU visible to torch (none found); use backend.device=cpu")
