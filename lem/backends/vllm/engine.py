"""The vLLM engine adapter, written against vLLM 0.33's APIs (the V1 engine).

Used: ``vllm.LLM(model=..., **EngineArgs fields)`` to build the engine; its ``llm_engine``
(``vllm.v1.engine.llm_engine.LLMEngine``) request-level API — ``add_request(request_id,
{"type": "token", "prompt_token_ids": ...}, SamplingParams)``, ``step()``, ``abort_request`` — and
``SamplingParams(output_kind=RequestOutputKind.DELTA, detokenize=False, ...)``, whose
``RequestOutput.outputs[0].token_ids`` then hold only the tokens new since the last step.

One path serves every traffic pattern: request i is added to the engine no earlier than its
arrival time (between engine steps, as a server's frontend hands requests over), and each
delta is timed with ``perf_counter`` when it reaches lem — the clock and the point at which
the PyTorch adapter's streamer times its tokens, so TTFT and ITL mean the same for both.
Offline traffic is the case where every arrival is the same instant; ``LLM.generate`` is not
used for it because it returns only finished outputs, with no per-token times.

vllm is imported in ``init_engine`` only, so ``python -m lem --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import Any, Iterator, Sequence

from lem.backends.base import (
    EngineDescription,
    EngineSpec,
    RawGeneration,
    check_requests_fit,
)
from lem.backends.hf_files import context_length, hub_revision, load_hf_tokenizer
from lem.backends.serving import ServingEngine, engine_parallel_sizes
from lem.errors import ConfigError, LemError, first_line
from lem.workload.types import GenerationParams, PreparedRequest

REQUEST_ID_PREFIX = "lem-"


def vllm_engine_args(spec: EngineSpec, model_path: str) -> dict[str, Any]:
    """The keyword arguments for ``vllm.LLM`` (``EngineArgs`` fields) that ``spec`` asks for."""
    v = spec.options
    tp, pp = engine_parallel_sizes(spec.sharding, spec.options, "vllm")
    args: dict[str, Any] = {
        "model": model_path,
        "trust_remote_code": spec.model.trust_remote_code,
        "dtype": spec.precision.dtype.value,  # auto | float16 | bfloat16 | float32 are vLLM's names too
        "seed": spec.seed,
        # Room for the longest prompt lem can send plus a full-length answer (within the model's own
        # context), so no request is cut short; serve() refuses any request that would not fit.
        "max_model_len": v.max_model_len or context_length(model_path, spec.max_input_tokens + spec.max_output_tokens),
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "enforce_eager": v.enforce_eager,
        "kv_cache_dtype": v.kv_cache_dtype,
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        # Stats on: RequestOutput.metrics then carries the engine's own scheduling timestamps.
        "disable_log_stats": False,
    }
    revision = hub_revision(spec.model, model_path)
    if revision:
        args["revision"] = revision
    for name in ("max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching", "quantization", "speculative_config"):
        value = getattr(v, name)
        if value is not None:
            args[name] = value
    args.update(v.engine_args)
    return args


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
    """``ContinuousBackend`` on vLLM's engine: lem hands requests over at their arrival times, vLLM schedules them."""

    engine_name = "vllm"

    def __init__(self, spec: EngineSpec) -> None:
        super().__init__(spec)
        self._vllm: Any = None
        self._engine_args: dict[str, Any] = {}

    # -- phases -------------------------------------------------------------------------

    def init_engine(self) -> None:
        import vllm  # importing it (torch, CUDA libraries, kernels) is part of this engine's start-up

        self._vllm = vllm
        self._check_engine_args_passthrough()

    def load_model(self) -> None:
        """Build the engine: vLLM loads weights, profiles memory for the KV cache, compiles and captures
        CUDA graphs in one constructor, so all of that is measured as model_load."""
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
        path, self._tokenizer, self._eos_ids = load_hf_tokenizer(self.spec.model)
        self._model_path = path
        self._engine_args = vllm_engine_args(self.spec, path)
        try:
            self._llm = self._vllm.LLM(**self._engine_args)
        except (ValueError, TypeError) as e:  # vLLM's argument and model checks
            raise LemError(f"backend=vllm: vLLM refused to start the engine: {first_line(e)}") from e

    def serve(
        self, requests: Sequence[PreparedRequest], arrival_times: Sequence[float], params: GenerationParams
    ) -> Iterator[RawGeneration]:
        engine = self._require_llm().llm_engine
        sampling = self._sampling_params(params)
        check_requests_fit(requests, params.max_output_tokens, self._engine_args.get("max_model_len"), "backend.vllm.max_model_len")
        by_key = {REQUEST_ID_PREFIX + str(r.request_id): (r, arrival) for r, arrival in zip(requests, arrival_times, strict=True)}
        pending = deque(sorted(by_key, key=lambda key: by_key[key][1]))
        live: dict[str, _Stream] = {}
        try:
            while pending or live:
                now = time.perf_counter()
                while pending and by_key[pending[0]][1] <= now:
                    key = pending.popleft()
                    request, arrival = by_key[key]
                    # vLLM 0.33's rendered token input (vllm.inputs.engine.tokens_input): the ids go to the
                    # engine as they are, past the renderer; older vLLMs read the same dict as a TokensPrompt.
                    prompt = {"type": "token", "prompt_token_ids": list(request.input_ids)}
                    live[key] = _Stream(request.request_id, arrival, time.perf_counter())
                    engine.add_request(key, prompt, sampling)
                if not live:
                    # Nothing in flight: sleep until the next arrival instead of stepping an idle engine.
                    time.sleep(max(0.0, by_key[pending[0]][1] - time.perf_counter()))
                    continue
                outputs = engine.step()
                received = time.perf_counter()  # when this step's tokens reached lem
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
                        finished.append(stream.raw(output.metrics))
                yield from finished
        finally:
            if live:
                engine.abort_request(list(live))  # a consumer that stopped early leaves nothing running

    def synchronize(self) -> None:
        """Nothing to wait for: each step's outputs are on the host (the GPU work behind them is done)
        before ``step`` returns, and lem queues no device work of its own."""

    def describe(self) -> EngineDescription:
        from lem.backends.hf_files import checkpoint_dtype

        vllm = self._vllm
        version = getattr(vllm, "__version__", "unknown") if vllm is not None else "not loaded"
        dtype = self.spec.precision.dtype.value
        model_config = getattr(getattr(self._llm, "llm_engine", None), "model_config", None)
        if model_config is not None and getattr(model_config, "dtype", None) is not None:
            dtype = str(model_config.dtype).removeprefix("torch.")  # what "auto" resolved to
        elif dtype == "auto" and self._model_path is not None:
            dtype = checkpoint_dtype(self._model_path) or dtype
        extra: dict[str, Any] = {
            "engine_args": {k: v for k, v in self._engine_args.items() if k != "model"},
            "model_path": self._model_path,
            "use_cache": True,  # paged KV cache, always on
            "quantization": self.spec.options.quantization,
            "sampling_seed": f"engine seed (run.seed={self.spec.seed}); no per-request seeds",
            "token_times": "host perf_counter when each streamed delta reached lem",
            "setup_phases": "model_load holds vLLM's whole constructor: weights, KV-cache profiling, compile, CUDA graphs",
        }
        return self._description(f"vllm {version}", dtype, extra)

    def unload(self) -> None:
        def shutdown(llm: Any) -> None:
            engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if engine_core is not None and hasattr(engine_core, "shutdown"):
                engine_core.shutdown()  # stops the engine-core process and its GPU workers now, not at exit

        self._free_llm(shutdown)

    # -- helpers --------------------------------------------------------------------------

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
