"""The TensorRT-LLM engine adapter, written against TensorRT-LLM 1.x's LLM API (1.0 to 1.2).

Used: ``tensorrt_llm.LLM`` (1.x's default PyTorch runtime) or, with
``backend.tensorrt.runtime=trt_engine``, ``tensorrt_llm._tensorrt_engine.LLM``, which builds a
TensorRT engine from ``BuildConfig`` and ``QuantConfig(quant_algo=QuantAlgo.<name>)``; both take
``KvCacheConfig(free_gpu_memory_fraction=...)`` and tensor/pipeline parallel sizes. Requests go
in as token ids through ``LLM.generate_async(token_ids, SamplingParams, streaming=True)``, whose
result is an async iterator: each step's new tokens are ``outputs[0].token_ids_diff``.

Every request is submitted when lem's admission hands it over (its arrival, within
``batching.*``: ``lem.workload.admission``) from an asyncio loop on a worker thread (the
executor schedules what it holds: in-flight batching), and each streamed delta is timed with
``perf_counter`` when it reaches lem — as the PyTorch and vLLM adapters time theirs. Finished
requests cross to the caller through a queue, so the caller's record writing never delays the
timing of tokens still streaming.

tensorrt_llm is imported in ``init_engine`` only, so ``python -m lem --help`` stays instant.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterator

from lem.backends.base import (
    EngineDescription,
    EngineSpec,
    RawGeneration,
    check_requests_fit,
)
from lem.backends.hf_files import context_length, hub_revision, load_hf_tokenizer
from lem.backends.serving import ServingEngine, engine_parallel_sizes
from lem.backends.tensorrt.config import TensorRTRuntime
from lem.errors import ConfigError, LemError, first_line
from lem.workload.types import GenerationParams

if TYPE_CHECKING:
    from lem.workload.admission import Admission, Handover
    from lem.workload.steps import StepLog

_DONE = object()  # the worker thread's last message


def tensorrt_llm_args(spec: EngineSpec, model_path: str, llmapi: Any) -> dict[str, Any]:
    """Keyword arguments for the ``LLM`` constructor of the configured runtime; ``llmapi`` is
    ``tensorrt_llm.llmapi`` (KvCacheConfig, BuildConfig, QuantConfig, QuantAlgo)."""
    t = spec.options
    tp, pp = engine_parallel_sizes(spec.sharding, spec.options, "tensorrt")
    passthrough = dict(t.llm_args)
    kv_cache = {"free_gpu_memory_fraction": t.kv_cache_free_gpu_memory_fraction, **(passthrough.pop("kv_cache_config", None) or {})}
    limits: dict[str, Any] = {
        "max_batch_size": t.max_batch_size,
        # Room for the longest prompt lem can send plus a full-length answer (within the model's own
        # context), so no request is cut short; serve() refuses any request that would not fit.
        "max_input_len": t.max_input_len or context_length(model_path, spec.max_input_tokens),
        "max_seq_len": t.max_seq_len or context_length(model_path, spec.max_input_tokens + spec.max_output_tokens),
        "max_num_tokens": t.max_num_tokens,
    }
    args: dict[str, Any] = {
        "model": model_path,
        "dtype": spec.precision.dtype.value,  # auto | float16 | bfloat16 | float32 are TensorRT-LLM's names too
        "trust_remote_code": spec.model.trust_remote_code,
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "kv_cache_config": llmapi.KvCacheConfig(**kv_cache),
    }
    revision = hub_revision(spec.model, model_path)
    if revision:
        args["revision"] = revision
    if t.runtime is TensorRTRuntime.trt_engine:
        # Engine shapes are fixed when the engine is built: the limits belong to its BuildConfig.
        build = {k: v for k, v in limits.items() if v is not None}
        build.update(passthrough.pop("build_config", None) or {})
        args["build_config"] = llmapi.BuildConfig(**build)
        if t.quantization:
            args["quant_config"] = llmapi.QuantConfig(quant_algo=_quant_algo(llmapi, t.quantization))
    else:
        if t.max_input_len is None:
            limits.pop("max_input_len")  # the PyTorch runtime checks prompts against max_num_tokens, not this
        args.update({k: v for k, v in limits.items() if v is not None})
    args.update(passthrough)
    return args


def tensorrt_sampling_kwargs(params: GenerationParams, eos_token_ids: frozenset[int], primary_eos: int | None) -> dict[str, Any]:
    """``SamplingParams`` fields for lem's engine-independent decoding settings."""
    eos = sorted(eos_token_ids)
    end_id = primary_eos if primary_eos is not None else (eos[0] if eos else None)
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": params.max_output_tokens,
        "ignore_eos": params.ignore_eos,  # exactly max_tokens
        "repetition_penalty": params.repetition_penalty,
        "detokenize": False,  # lem counts token ids; detokenising would add CPU work no other engine does
        "end_id": end_id,  # set explicitly, so TensorRT-LLM does not pick its own from its tokenizer
    }
    if params.min_output_tokens > 0:
        kwargs["min_tokens"] = params.min_output_tokens
    if params.do_sample:
        # top_k=0 means "all logits" in TensorRT-LLM, as in lem.
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, seed=params.seed)
    else:
        kwargs["temperature"] = 0.0  # TensorRT-LLM's documented greedy setting
    others = [i for i in eos if i != end_id]
    if not params.ignore_eos and others:
        kwargs["stop_token_ids"] = others  # the rest of the EOS set every engine stops on
    return kwargs


class TensorRTBackend(ServingEngine):
    """``ContinuousBackend`` on TensorRT-LLM's LLM API: requests submitted at arrival, tokens streamed back."""

    engine_name = "tensorrt"

    def __init__(self, spec: EngineSpec) -> None:
        super().__init__(spec)
        self._trtllm: Any = None
        self._llm_args: dict[str, Any] = {}

    # -- phases -------------------------------------------------------------------------

    def init_engine(self) -> None:
        import tensorrt_llm  # importing it (torch, TensorRT, MPI bindings) is part of this engine's start-up

        self._trtllm = tensorrt_llm

    def load_model(self) -> None:
        """Build the LLM: TensorRT-LLM loads weights, sizes the KV cache (and, for trt_engine, builds
        the TensorRT engine) in one constructor, so all of that is measured as model_load."""
        if self._trtllm is None:
            self.init_engine()
        from tensorrt_llm import llmapi

        path, self._tokenizer, self._eos_ids = load_hf_tokenizer(self.spec.model)
        self._model_path = path
        self._llm_args = tensorrt_llm_args(self.spec, path, llmapi)
        llm_class = self._llm_class()
        try:
            self._llm = llm_class(**self._llm_args)
        except (ValueError, TypeError) as e:  # TensorRT-LLM's argument and model checks
            raise LemError(f"backend=tensorrt: TensorRT-LLM refused to start the engine: {first_line(e)}") from e

    def serve(self, admission: Admission, params: GenerationParams, steps: StepLog) -> Iterator[RawGeneration]:
        """``steps`` stays empty: the executor's per-iteration batch is not read (its iteration stats
        need ``enable_iter_perf_stats``); the summary's engine_steps is then null, not guessed."""
        llm = self._require_llm()
        check_requests_fit(admission.requests, params.max_output_tokens, self._max_seq_len(), "backend.tensorrt.max_seq_len")
        if admission.done:
            return
        finished: queue.Queue[Any] = queue.Queue()
        worker = _ServeThread(llm, self._trtllm.SamplingParams, self._sampling_kwargs(params), admission, finished)
        worker.start()
        try:
            while True:
                item = finished.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            worker.stop()

    def synchronize(self) -> None:
        """Nothing to wait for: a streamed token reaches lem only after the executor produced it on the
        GPU, and lem queues no device work of its own."""

    def describe(self) -> EngineDescription:
        from lem.backends.hf_files import checkpoint_dtype

        version = getattr(self._trtllm, "__version__", "unknown") if self._trtllm is not None else "not loaded"
        dtype = self.spec.precision.dtype.value
        if dtype == "auto" and self._model_path is not None:
            dtype = checkpoint_dtype(self._model_path) or dtype  # the PyTorch runtime keeps the checkpoint's dtype
        t = self.spec.options
        extra: dict[str, Any] = {
            "runtime": t.runtime.value,
            "llm_args": {k: _json_view(v) for k, v in self._llm_args.items() if k != "model"},
            "model_path": self._model_path,
            "use_cache": True,  # paged KV cache, always on
            "quantization": t.quantization,
            "token_times": "host perf_counter when each streamed delta reached lem",
            "setup_phases": "model_load holds TensorRT-LLM's whole constructor: weights, KV cache (and engine build for trt_engine)",
        }
        return self._description(f"tensorrt_llm {version}", dtype, extra)

    def unload(self) -> None:
        def shutdown(llm: Any) -> None:
            if hasattr(llm, "shutdown"):
                llm.shutdown()  # stops the executor and its worker processes now, not at exit

        self._free_llm(shutdown)

    # -- helpers --------------------------------------------------------------------------

    def _llm_class(self) -> Any:
        if self.spec.options.runtime is TensorRTRuntime.trt_engine:
            from tensorrt_llm._tensorrt_engine import (
                LLM,  # 1.x's home of the TensorRT-engine LLM
            )

            return LLM
        return self._trtllm.LLM

    def _sampling_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        primary = getattr(self._tokenizer, "eos_token_id", None)
        return tensorrt_sampling_kwargs(params, self._eos_ids, int(primary) if primary is not None else None)

    def _max_seq_len(self) -> int | None:
        if "build_config" in self._llm_args:
            return getattr(self._llm_args["build_config"], "max_seq_len", None)
        return self._llm_args.get("max_seq_len")


class _ServeThread:
    """An asyncio loop on a worker thread: it submits each request when ``admission`` hands it over
    (arrival, batching policy) and reads its stream; each finished RawGeneration (or the first
    error) goes to ``finished``. The admission is used on this thread only."""

    def __init__(
        self,
        llm: Any,
        sampling_class: Any,
        sampling_kwargs: dict[str, Any],
        admission: Admission,
        finished: queue.Queue[Any],
    ) -> None:
        self._llm = llm
        self._sampling_class = sampling_class
        self._sampling_kwargs = sampling_kwargs
        self._admission = admission
        self._finished = finished
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[Any] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lem-tensorrt-serve", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        """Cancel what is still running (a caller that stopped early) and wait for the thread."""
        if self._thread.is_alive() and self._loop is not None and self._main is not None:
            self._loop.call_soon_threadsafe(self._main.cancel)
        self._thread.join()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve_all())
        except asyncio.CancelledError:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, raised there
            self._finished.put(e)
        finally:
            self._ready.set()  # also when the loop failed before it started serving
        self._finished.put(_DONE)

    async def _serve_all(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        self._ready.set()
        admission = self._admission
        changed = asyncio.Event()  # a request finished: room for the next
        running: set[asyncio.Task[Any]] = set()
        try:
            while not admission.done:
                now = time.perf_counter()
                for handover in admission.due(now):
                    task = asyncio.create_task(self._serve_one(handover, changed))
                    running.add(task)
                changed.clear()
                wait_s = admission.wait_s(now)  # 0: nothing more arrives; wait for a request to finish
                try:
                    await asyncio.wait_for(changed.wait(), timeout=wait_s if wait_s > 0 else None)
                except asyncio.TimeoutError:
                    pass
                for task in [t for t in running if t.done()]:
                    running.discard(task)
                    task.result()  # the first error ends the serve
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _serve_one(self, handover: Handover, changed: asyncio.Event) -> None:
        try:
            await self._stream_one(handover)
        finally:
            changed.set()  # finished or failed: the serve loop looks again

    async def _stream_one(self, handover: Handover) -> None:
        request = handover.request
        handed = time.perf_counter()
        # One SamplingParams per request: the LLM API fills fields of the object it is given.
        sampling = self._sampling_class(**self._sampling_kwargs)
        # Called inside the running loop, so the result streams through an asyncio queue.
        stream = self._llm.generate_async(list(request.input_ids), sampling_params=sampling, streaming=True)
        token_ids: list[int] = []
        token_times: list[float] = []
        try:
            async for output in stream:
                received = time.perf_counter()
                new_ids = list(output.outputs[0].token_ids_diff)
                token_ids.extend(new_ids)
                token_times.extend([received] * len(new_ids))  # a multi-token delta arrived at once
        except asyncio.CancelledError:
            stream.abort()
            await _drain(stream)  # the engine's final "cancelled" response must land before this loop closes
            raise
        self._admission.finished(request.request_id)
        self._finished.put(
            RawGeneration(
                request_id=request.request_id,
                output_token_ids=token_ids,
                token_times=token_times,
                start_time=handed,  # when lem submitted it; the executor schedules it from then on
                padded_input_tokens=None,  # paged KV cache, no padding
                arrival_time=handover.arrival_time,
            )
        )


async def _drain(stream: Any, timeout_s: float = 10.0) -> None:
    async def rest() -> None:
        async for _ in stream:
            pass

    try:
        await asyncio.wait_for(rest(), timeout_s)
    except Exception:  # noqa: BLE001 - best effort while shutting a stopped serve down
        pass


def _quant_algo(llmapi: Any, name: str) -> Any:
    algo = getattr(llmapi.QuantAlgo, name.upper(), None)
    if algo is None:
        names = ", ".join(m for m in getattr(llmapi.QuantAlgo, "__members__", {}))
        raise ConfigError("backend.tensorrt.quantization", name, f"a QuantAlgo name: {names}")
    return algo


def _json_view(value: Any) -> Any:
    """A JSON-friendly view of a config object for the run header."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_view(v) for k, v in value.items()}
    for dump in ("model_dump", "to_dict"):
        if hasattr(value, dump):
            try:
                return _json_view(getattr(value, dump)())
            except Exception:  # noqa: BLE001 - a description only; fall back to repr
                break
    if hasattr(value, "__dict__"):
        return {k: _json_view(v) for k, v in vars(value).items() if not k.startswith("_")}
    return repr(value)
