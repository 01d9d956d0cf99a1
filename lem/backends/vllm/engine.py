"""The vLLM engine adapter, written against vLLM's V1 engine (0.32 CPU build, 0.33 GPU build).

Used: ``vllm.EngineArgs`` and ``vllm.v1.engine.llm_engine.LLMEngine.from_engine_args(...,
stat_loggers=[...])`` to build the engine (what ``vllm.LLM`` builds, plus a stat logger that
receives the scheduler's stats every step); its request-level API — ``add_request(request_id,
{"type": "token", "prompt_token_ids": ...}, SamplingParams)``, ``step()``, ``abort_request`` — and
``SamplingParams(output_kind=RequestOutputKind.DELTA, detokenize=False, ...)``, whose
``RequestOutput.outputs[0].token_ids`` then hold only the tokens new since the last step.

One path serves every traffic pattern and batching strategy: between engine steps lem asks its
admission (``lem.workload.admission``: arrivals, then ``batching.*``) which requests to add, and
each delta is timed with ``perf_counter`` when it reaches lem — the clock and the point at which
the PyTorch adapter's streamer times its tokens, so TTFT and ITL mean the same for both. Each
step's running and waiting requests (vLLM's ``SchedulerStats``) go to the run's step log.
``LLM.generate`` is not used: it returns only finished outputs, with no per-token times.

On the CPU build, ``dtype=auto`` means float32 unless the CPU has AMX (bfloat16 without AMX runs
several times slower), ``enforce_eager`` defaults to True, and the KV-cache size and thread
binding come from ``backend.vllm.cpu_*`` (vLLM reads them from the environment).

vllm is imported in ``init_engine`` only, so ``python -m lem --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any, Iterator

from lem.backends.base import (
    EngineDescription,
    EngineSpec,
    RawGeneration,
    check_requests_fit,
)
from lem.backends.hf_files import context_length, hub_revision, load_hf_tokenizer
from lem.backends.serving import ServingEngine, engine_parallel_sizes
from lem.errors import ConfigError, LemError, first_line
from lem.workload.types import GenerationParams

if TYPE_CHECKING:
    from lem.workload.admission import Admission
    from lem.workload.steps import StepLog

REQUEST_ID_PREFIX = "lem-"
STEP_SOURCE = "vllm scheduler stats"


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bfloat16 (Sapphire Rapids and later), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def resolved_dtype(dtype: str, on_cpu: bool) -> str:
    """The dtype lem asks vLLM for: ``auto`` on a CPU without AMX is float32 (vLLM would pick the
    checkpoint's bfloat16, which such CPUs emulate slowly); otherwise what the config says."""
    if dtype == "auto" and on_cpu and not cpu_has_amx():
        return "float32"
    return dtype


EOS_EXEMPT_PROCESSOR = "lem.backends.vllm.eos_exempt:EosExemptRepetitionPenalty"  # = eos_exempt.QUALNAME


def vllm_engine_args(spec: EngineSpec, model_path: str, on_cpu: bool = False) -> dict[str, Any]:
    """The ``vllm.EngineArgs`` fields that ``spec`` asks for (``on_cpu``: vLLM's CPU build)."""
    v = spec.options
    tp, pp = engine_parallel_sizes(spec.sharding, spec.options, "vllm")
    args: dict[str, Any] = {
        "model": model_path,
        "trust_remote_code": spec.model.trust_remote_code,
        "dtype": resolved_dtype(spec.precision.dtype.value, on_cpu),  # auto | float16 | bfloat16 | float32: vLLM's names too
        "seed": spec.seed,
        # Room for the longest prompt lem can send plus a full-length answer (within the model's own
        # context), so no request is cut short; serve() refuses any request that would not fit.
        "max_model_len": v.max_model_len or context_length(model_path, spec.max_input_tokens + spec.max_output_tokens),
        # CPU: no CUDA graphs to capture; GPU: vLLM's default (graphs captured in model_load).
        "enforce_eager": v.enforce_eager if v.enforce_eager is not None else on_cpu,
        "kv_cache_dtype": v.kv_cache_dtype,
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        # Stats on: the scheduler's per-step stats reach lem's stat logger, and RequestOutput.metrics
        # carries the engine's own scheduling timestamps.
        "disable_log_stats": False,
    }
    if not on_cpu:
        args["gpu_memory_utilization"] = v.gpu_memory_utilization  # the CPU build sizes its cache from cpu_kvcache_space_gib
    revision = hub_revision(spec.model, model_path)
    if revision:
        args["revision"] = revision
    args["enable_prefix_caching"] = v.enable_prefix_caching
    for name in ("max_num_seqs", "max_num_batched_tokens", "quantization", "speculative_config"):
        value = getattr(v, name)
        if value is not None:
            args[name] = value
    if v.speculative_config is None:  # vLLM refuses custom logits processors with speculative decoding
        # The repetition penalty exempts the EOS ids, as on every engine (conf/decoder/creative.yaml). A name,
        # not the class: the module imports vllm and is loaded by vLLM's engine core.
        args["logits_processors"] = [EOS_EXEMPT_PROCESSOR]
    user = dict(v.engine_args)
    if "logits_processors" in user and "logits_processors" in args:
        user["logits_processors"] = [*args["logits_processors"], *user["logits_processors"]]
    args.update(user)
    return args


def vllm_cpu_environment(options: Any) -> dict[str, str]:
    """The environment vLLM's CPU build reads its KV-cache size and thread binding from."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(options.cpu_kvcache_space_gib), "VLLM_CPU_OMP_THREADS_BIND": options.cpu_omp_threads_bind}
    if options.cpu_reserved_cpus is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(options.cpu_reserved_cpus)
    return env


def engine_process_cpus() -> list[int] | None:
    """The CPUs vLLM's model worker is bound to (the smallest affinity among this process's
    descendants), or None when none can be read: how many cores the CPU build really computes on."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return None
    affinities = []
    for child in children:
        try:
            affinities.append(sorted(child.cpu_affinity()))
        except (psutil.Error, AttributeError):
            continue
    return min(affinities, key=len) if affinities else None


def vllm_sampling_kwargs(params: GenerationParams, eos_token_ids: frozenset[int]) -> dict[str, Any]:
    """``SamplingParams`` fields for lem's engine-independent decoding settings (output_kind added by the caller)."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": params.max_output_tokens,
        "min_tokens": params.min_output_tokens,
        "ignore_eos": params.ignore_eos,  # exactly max_tokens: vLLM's own fixed-length switch
        "repetition_penalty": params.repetition_penalty,
        "detokenize": False,  # lem counts token ids; detokenising would add CPU work no other engine does
    }
    if params.do_sample:
        # top_k=0 is "off" in vLLM >= 0.8, as in lem. No per-request seed: vLLM samples seeded requests
        # one at a time (v1 random_sample), which would slow every step; the engine seed (run.seed) holds.
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
    else:
        kwargs["temperature"] = 0.0  # vLLM's greedy decoding
    if not params.ignore_eos and eos_token_ids:
        # The same stop ids as every other engine (vLLM would add the generation config's itself).
        kwargs["stop_token_ids"] = sorted(eos_token_ids)
    return kwargs


class VllmBackend(ServingEngine):
    """``ContinuousBackend`` on vLLM's engine: lem hands requests over as its admission says, vLLM schedules them."""

    engine_name = "vllm"

    def __init__(self, spec: EngineSpec) -> None:
        super().__init__(spec)
        self._vllm: Any = None
        self._engine_args: dict[str, Any] = {}
        self._environment: dict[str, str] = {}
        self._on_cpu = False
        self._step_sink: list[tuple[float, int, int]] = []  # (perf_counter, running, waiting) per engine step

    # -- phases -------------------------------------------------------------------------

    def init_engine(self) -> None:
        import vllm  # importing it (torch, kernels, the platform probe) is part of this engine's start-up
        from vllm.platforms import current_platform

        self._vllm = vllm
        self._on_cpu = current_platform.device_type == "cpu"
        self._check_engine_args_passthrough()

    def load_model(self) -> None:
        """Build the engine: vLLM loads weights, profiles memory for the KV cache, compiles and captures
        CUDA graphs (GPU) in one constructor, so all of that is measured as model_load."""
        if self._vllm is None:
            self.init_engine()
        import multiprocessing

        if multiprocessing.current_process().daemon:
            # vLLM starts its engine core (and GPU workers) as child processes, which Python forbids
            # in a daemonic process: say so in one line instead of failing deep inside vLLM.
            raise LemError(
                "backend=vllm: this process is a daemonic worker, and vLLM must start its engine-core process "
                "from it; run with run.isolation=inline"
            )
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.llm_engine import LLMEngine

        path, self._tokenizer, self._eos_ids = load_hf_tokenizer(self.spec.model)
        self._model_path = path
        self._engine_args = vllm_engine_args(self.spec, path, self._on_cpu)
        if self._on_cpu:
            self._environment = vllm_cpu_environment(self.spec.options)
            os.environ.update(self._environment)  # read by the engine-core process vLLM starts next
        try:
            engine_args = self._vllm.EngineArgs(**self._engine_args)
            self._llm = LLMEngine.from_engine_args(
                engine_args, usage_context=UsageContext.LLM_CLASS, stat_loggers=[_step_logger_factory(self._step_sink)]
            )
        except (ValueError, TypeError) as e:  # vLLM's argument and model checks
            raise LemError(f"backend=vllm: vLLM refused to start the engine: {first_line(e)}") from e

    def serve(self, admission: Admission, params: GenerationParams, steps: StepLog) -> Iterator[RawGeneration]:
        engine = self._require_llm()
        sampling = self._sampling_params(params)
        check_requests_fit(admission.requests, params.max_output_tokens, self._engine_args.get("max_model_len"), "backend.vllm.max_model_len")
        max_num_seqs = self._effective_settings().get("max_num_seqs")
        if isinstance(max_num_seqs, int) and admission.max_in_flight > max_num_seqs:
            raise LemError(
                f"batching.batch_size={admission.max_in_flight} is more than the engine runs at once "
                f"(max_num_seqs={max_num_seqs}); lower batching.batch_size or raise backend.vllm.max_num_seqs"
            )
        steps.source = STEP_SOURCE
        self._step_sink.clear()
        live: dict[str, _Stream] = {}
        try:
            while not admission.done:
                now = time.perf_counter()
                for handover in admission.due(now):
                    request = handover.request
                    key = REQUEST_ID_PREFIX + str(request.request_id)
                    # The ids go to the engine as they are (vLLM's token input), past its renderer.
                    prompt = {"type": "token", "prompt_token_ids": list(request.input_ids)}
                    live[key] = _Stream(request.request_id, handover.arrival_time, time.perf_counter())
                    engine.add_request(key, prompt, sampling)
                if not live:
                    # Nothing in flight: sleep until the next arrival instead of stepping an idle engine.
                    time.sleep(admission.wait_s(now))
                    continue
                outputs = engine.step()
                received = time.perf_counter()  # when this step's tokens reached lem
                for t, running, waiting in self._step_sink:
                    # lem's queue (arrived, not handed over) waits too, as a server's queue would.
                    steps.add(t, running, waiting + admission.queued(t))
                self._step_sink.clear()
                finished: list[RawGeneration] = []
                for output in outputs:
                    stream = live.get(output.request_id)
                    if stream is None:
                        continue
                    new_ids = list(output.outputs[0].token_ids) if output.outputs else []
                    stream.token_ids.extend(new_ids)
                    stream.token_times.extend([received] * len(new_ids))  # a multi-token delta arrived at once
                    if output.finished:
                        del live[output.request_id]
                        admission.finished(stream.request_id)
                        finished.append(stream.raw(output.metrics))
                yield from finished
        finally:
            if live:
                engine.abort_request(list(live))  # a consumer that stopped early leaves nothing running

    def synchronize(self) -> None:
        """Nothing to wait for: each step's outputs are on the host (the device work behind them is done)
        before ``step`` returns, and lem queues no device work of its own."""

    def describe(self) -> EngineDescription:
        from lem.backends.hf_files import checkpoint_dtype
        from lem.backends.pytorch.engine import cpu_name

        vllm = self._vllm
        version = getattr(vllm, "__version__", "unknown") if vllm is not None else "not loaded"
        dtype = self._engine_args.get("dtype", self.spec.precision.dtype.value)
        model_config = getattr(self._llm, "model_config", None)
        if model_config is not None and getattr(model_config, "dtype", None) is not None:
            dtype = str(model_config.dtype).removeprefix("torch.")  # what vLLM actually runs in
        elif dtype == "auto" and self._model_path is not None:
            dtype = checkpoint_dtype(self._model_path) or dtype
        extra: dict[str, Any] = {
            "engine_args": {k: v for k, v in self._engine_args.items() if k != "model"},
            "effective": self._effective_settings(),
            "platform": "cpu" if self._on_cpu else "cuda",
            "model_path": self._model_path,
            "use_cache": True,  # paged KV cache, always on
            "quantization": self.spec.options.quantization,
            "sampling_seed": f"engine seed (run.seed={self.spec.seed}); no per-request seeds",
            "token_times": "host perf_counter when each streamed delta reached lem",
            "engine_steps": "running/waiting requests per engine step from vLLM's SchedulerStats",
            "setup_phases": "model_load holds vLLM's whole constructor: weights, KV-cache sizing, compile and CUDA graphs (GPU)",
        }
        if self._on_cpu:
            extra["cpu_environment"] = dict(self._environment)
            extra["amx_bf16"] = cpu_has_amx()
            cpus = engine_process_cpus() if self._llm is not None else None
            extra["engine_cpus"] = cpus  # the cores vLLM's OpenMP threads are bound to
            description = self._description(f"vllm {version} (cpu)", dtype, extra, device_type="cpu", device_names=[cpu_name()])
            description.num_threads = len(cpus) if cpus else None
            return description
        return self._description(f"vllm {version}", dtype, extra)

    def unload(self) -> None:
        def shutdown(engine: Any) -> None:
            engine_core = getattr(engine, "engine_core", None)
            if engine_core is not None and hasattr(engine_core, "shutdown"):
                engine_core.shutdown()  # stops the engine-core process and its workers now, not at exit

        self._free_llm(shutdown)

    # -- helpers --------------------------------------------------------------------------

    def _effective_settings(self) -> dict[str, Any]:
        """What vLLM resolved its own defaults to (scheduler limits, block size, eager mode)."""
        config = getattr(self._llm, "vllm_config", None)
        if config is None:
            return {}
        scheduler, cache, model = config.scheduler_config, config.cache_config, config.model_config
        return {
            "max_num_seqs": getattr(scheduler, "max_num_seqs", None),
            "max_num_batched_tokens": getattr(scheduler, "max_num_batched_tokens", None),
            "chunked_prefill": getattr(scheduler, "enable_chunked_prefill", None),
            "block_size": getattr(cache, "block_size", None),
            "prefix_caching": getattr(cache, "enable_prefix_caching", None),
            "max_model_len": getattr(model, "max_model_len", None),
            "enforce_eager": getattr(model, "enforce_eager", None),
        }

    def _sampling_params(self, params: GenerationParams) -> Any:
        from vllm.sampling_params import RequestOutputKind

        kwargs = vllm_sampling_kwargs(params, self._eos_ids)
        return self._vllm.SamplingParams(output_kind=RequestOutputKind.DELTA, **kwargs)

    def _check_engine_args_passthrough(self) -> None:
        known = {f.name for f in dataclasses.fields(self._vllm.EngineArgs)}
        for name, value in self.spec.options.engine_args.items():
            if name not in known:
                version = getattr(self._vllm, "__version__", "?")
                raise ConfigError(f"backend.vllm.engine_args.{name}", value, f"a vllm.EngineArgs field (vllm {version} has no '{name}')")


def _step_logger_factory(sink: list[tuple[float, int, int]]) -> Any:
    """A vLLM stat-logger class that appends (time, running, waiting) of every engine step to ``sink``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class LemStepLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                sink.append((time.perf_counter(), int(scheduler_stats.num_running_reqs), int(scheduler_stats.num_waiting_reqs)))

        def log_engine_initialized(self) -> None:
            pass

    return LemStepLogger


@dataclasses.dataclass
class _Stream:
    """One request in flight: its tokens and when each reached lem."""

    request_id: int
    arrival_time: float  # when it arrived (open loop); waiting for a running step is queueing, as in a server
    handed_time: float  # when lem called add_request
    token_ids: list[int] = dataclasses.field(default_factory=list)
    token_times: list[float] = dataclasses.field(default_factory=list)

    def raw(self, metrics: Any) -> RawGeneration:
        return RawGeneration(
            request_id=self.request_id,
            output_token_ids=self.token_ids,
            token_times=self.token_times,
            start_time=self._start_time(metrics),
            padded_input_tokens=None,  # paged attention: no padding
            arrival_time=self.arrival_time,
        )

    def _start_time(self, metrics: Any) -> float:
        """When the engine first scheduled the request: vLLM's scheduled_ts (engine-core time.monotonic)
        where that clock is perf_counter's, else when lem handed it over."""
        scheduled = float(getattr(metrics, "scheduled_ts", 0.0) or 0.0)
        if scheduled > 0.0 and _perf_counter_is_monotonic():
            latest = self.token_times[0] if self.token_times else scheduled
            return min(max(scheduled, self.handed_time), latest)
        return self.handed_time


def _perf_counter_is_monotonic() -> bool:
    # On Linux both are clock_gettime(CLOCK_MONOTONIC), one system-wide clock across processes.
    return time.get_clock_info("perf_counter").implementation == time.get_clock_info("monotonic").implementation
