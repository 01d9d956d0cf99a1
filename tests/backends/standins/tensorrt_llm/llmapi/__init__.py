"""Stand-in for ``tensorrt_llm.llmapi`` (TensorRT-LLM 1.x, 1.0 to 1.2).

Followed from the 1.x sources: ``llmapi/llm.py`` (``BaseLLM`` rejects keywords that are not
fields of its args class with ``ValueError("... got invalid argument: ...")``; ``_TorchLLM``
rejects TrtLlmArgs-only ones such as build_config / quant_config; ``generate_async(inputs,
sampling_params, streaming=...)``; ``_check_arguments``: the PyTorch runtime refuses prompts longer
than max_num_tokens, the TensorRT runtime prompt + max_tokens > max_seq_len; ``shutdown``),
``executor/result.py`` (``GenerationResult``: an asyncio queue when created inside a running
loop, ``async for`` / ``for`` iteration, ``outputs[0].token_ids`` cumulative with
``token_ids_diff``, ``finished``, ``abort``; finish reasons stop/length/cancelled),
``llmapi/llm_args.py`` (``KvCacheConfig``, ``BuildConfig`` via ``tensorrt_llm.builder``,
``QuantConfig``/``QuantAlgo``, field names of ``TorchLlmArgs`` / ``TrtLlmArgs``).

The executor is a background thread (the real one is a worker process behind a proxy): each
iteration sleeps ``STEP_S`` and gives every active request (at most ``max_batch_size``) one
token. The "model" is a deterministic function of the prompt: it emits ``end_id`` every L tokens
(L from 2 to 6, set by the prompt), so a request naturally ends after L tokens; ``ignore_eos``
and ``min_tokens`` suppress it.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ..sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "KvCacheConfig", "BuildConfig", "QuantConfig", "QuantAlgo", "RequestOutput", "CompletionOutput"]

STEP_S = 0.002  # simulated forward pass per executor iteration
CONSTRUCTED: list[dict[str, Any]] = []  # (class name, kwargs) of every LLM built, for tests
SUBMITTED: dict[int, dict[str, Any]] = {}  # executor request id -> when generate_async ran, prompt ids, params


class QuantAlgo(str, Enum):
    W8A16 = "W8A16"
    W4A16 = "W4A16"
    W4A16_AWQ = "W4A16_AWQ"
    W4A8_AWQ = "W4A8_AWQ"
    W8A16_GPTQ = "W8A16_GPTQ"
    W4A16_GPTQ = "W4A16_GPTQ"
    W8A8_SQ_PER_CHANNEL = "W8A8_SQ_PER_CHANNEL"
    FP8 = "FP8"
    FP8_PER_CHANNEL_PER_TOKEN = "FP8_PER_CHANNEL_PER_TOKEN"
    FP8_BLOCK_SCALES = "FP8_BLOCK_SCALES"
    INT8 = "INT8"
    NVFP4 = "NVFP4"
    NO_QUANT = "NO_QUANT"


@dataclass
class QuantConfig:
    quant_algo: QuantAlgo | None = None
    kv_cache_quant_algo: QuantAlgo | None = None


@dataclass
class KvCacheConfig:
    enable_block_reuse: bool = True
    max_tokens: int | None = None
    free_gpu_memory_fraction: float | None = 0.9
    dtype: str = "auto"

    def model_dump(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class BuildConfig:
    max_input_len: int = 1024
    max_seq_len: int | None = None
    max_batch_size: int = 2048
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    opt_num_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


_BASE_FIELDS = {
    "model", "tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code", "tensor_parallel_size",
    "dtype", "revision", "tokenizer_revision", "pipeline_parallel_size", "context_parallel_size", "gpus_per_node",
    "kv_cache_config", "enable_chunked_prefill", "max_batch_size", "max_input_len", "max_seq_len", "max_beam_width",
    "max_num_tokens", "speculative_config", "return_perf_metrics", "scheduler_config", "num_postprocess_workers",
    "backend",
}


class TorchLlmArgs:
    model_fields = dict.fromkeys(
        _BASE_FIELDS
        | {"stream_interval", "cuda_graph_config", "disable_overlap_scheduler", "attn_backend", "sampler_type",
           "enable_iter_perf_stats", "print_iter_log", "torch_compile_config", "moe_config"}
    )


class TrtLlmArgs:
    model_fields = dict.fromkeys(
        _BASE_FIELDS
        | {"build_config", "quant_config", "calib_config", "workspace", "enable_build_cache", "fast_build",
           "extended_runtime_perf_knob_config", "normalize_log_probs", "batching_type"}
    )


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    _last_token_ids_len: int = field(default=0, init=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len :]


class RequestOutput:
    """The GenerationResult a ``generate_async`` call returns."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], sampling_params: SamplingParams, streaming: bool, executor: _Executor) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self._streaming = streaming
        self._executor = executor
        self._outputs = [CompletionOutput(0)]
        self._done = False
        self._aborted = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()  # has_event_loop()
            self.aqueue: asyncio.Queue[Any] | None = asyncio.Queue()
            self.queue: queue.Queue[Any] | None = None
        except RuntimeError:
            self._loop, self.aqueue, self.queue = None, None, queue.Queue()

    @property
    def outputs(self) -> list[CompletionOutput]:
        return self._outputs

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        self._executor.abort(self.request_id)
        self._aborted = True

    def aborted(self) -> bool:
        return self._aborted

    # executor side: called on the executor thread
    def _put(self, response: tuple[list[int], str | None]) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.aqueue.put_nowait, response)  # type: ignore[union-attr]
        else:
            self.queue.put(response)  # type: ignore[union-attr]

    def _handle_response(self, response: tuple[list[int], str | None]) -> None:
        new_ids, finish_reason = response
        output = self._outputs[0]
        output._last_token_ids_len = len(output.token_ids)
        output.token_ids.extend(new_ids)
        if finish_reason is not None:
            output.finish_reason = finish_reason
            self._done = True

    def result(self, timeout: float | None = None) -> RequestOutput:
        while not self._done:
            self._handle_response(self.queue.get(timeout=timeout))  # type: ignore[union-attr]
        return self

    def __iter__(self) -> RequestOutput:
        return self

    def __next__(self) -> RequestOutput:
        if self._done:
            raise StopIteration
        self._handle_response(self.queue.get())  # type: ignore[union-attr]
        return self

    def __aiter__(self) -> RequestOutput:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        assert self.aqueue is not None, "The asyncio event loop was not present during initialization, so async operations are not available."
        self._handle_response(await self.aqueue.get())
        return self


@dataclass
class _Active:
    result: RequestOutput
    prompt: list[int]
    params: SamplingParams
    output: list[int] = field(default_factory=list)


class _Executor:
    """In-flight batching on a background thread."""

    def __init__(self, max_batch_size: int, max_seq_len: int, end_id: int | None, vocab_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.end_id = end_id
        self.vocab_size = vocab_size
        self._lock = threading.Lock()
        self._waiting: list[_Active] = []
        self._active: list[_Active] = []
        self._next_id = 1
        self._shutdown = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="standin-trtllm-executor", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, streaming: bool) -> RequestOutput:
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
            result = RequestOutput(request_id, prompt, params, streaming, self)
            self._waiting.append(_Active(result, prompt, params))
        SUBMITTED[request_id] = {"time": time.perf_counter(), "prompt_token_ids": list(prompt), "params": params}
        self._wake.set()
        return result

    def abort(self, request_id: int) -> None:
        with self._lock:
            for pool in (self._waiting, self._active):
                for item in list(pool):
                    if item.result.request_id == request_id:
                        pool.remove(item)
                        item.result._put(([], "cancelled"))

    def shutdown(self) -> None:
        self._shutdown = True
        self._wake.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._shutdown:
            with self._lock:
                while self._waiting and len(self._active) < self.max_batch_size:
                    self._active.append(self._waiting.pop(0))
                active = list(self._active)
            if not active:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            time.sleep(STEP_S)
            for item in active:
                with self._lock:
                    if item not in self._active:
                        continue  # aborted during this iteration: its final response was already sent
                token = self._next_token(item)
                item.output.append(token)
                finish = self._finish_reason(item)
                if finish is not None:
                    with self._lock:
                        if item in self._active:
                            self._active.remove(item)
                if item.result._streaming or finish is not None:
                    new = [token] if item.result._streaming else list(item.output)
                    item.result._put((new, finish))

    def _next_token(self, item: _Active) -> int:
        params = item.params
        position = len(item.output)
        natural_length = 2 + sum(item.prompt) % 5
        masked = params.ignore_eos or position < (params.min_tokens or 0)
        stop_ids = set(params.stop_token_ids or []) | ({params.end_id} if params.end_id is not None else set())
        if (position + 1) % natural_length == 0 and params.end_id is not None and not masked:
            return params.end_id
        mix = 0 if params._greedy_decoding else (params.seed or 0) * 7 + 1
        token = 5 + (sum(item.prompt) * 31 + position * 17 + mix) % max(1, self.vocab_size - 5)
        while token in stop_ids:
            token = 5 + (token + 1 - 5) % max(1, self.vocab_size - 5)
        return token

    def _finish_reason(self, item: _Active) -> str | None:
        params = item.params
        last = item.output[-1]
        if not params.ignore_eos and last == params.end_id:
            return "stop"
        if not params.ignore_eos and last in (params.stop_token_ids or []):
            return "stop"
        if len(item.output) >= params.max_tokens or len(item.prompt) + len(item.output) >= self.max_seq_len:
            return "length"
        return None


class BaseLLM:
    _args_class: type = TorchLlmArgs
    _runtime = "pytorch"

    def __init__(self, model: str | Path, tokenizer: Any = None, tensor_parallel_size: int = 1, dtype: str = "auto", **kwargs: Any) -> None:
        valid = set(self._args_class.model_fields)
        for key in kwargs:
            if key not in valid:
                raise ValueError(f"{type(self).__name__} got invalid argument: {key}")
        CONSTRUCTED.append({"class": type(self).__module__ + "." + type(self).__name__, "model": str(model), "dtype": dtype, "tensor_parallel_size": tensor_parallel_size, **kwargs})
        model_dir = Path(model)
        config = _read_json(model_dir / "config.json")
        generation = _read_json(model_dir / "generation_config.json")
        eos = generation.get("eos_token_id", config.get("eos_token_id"))
        self._end_id = eos[0] if isinstance(eos, list) else eos
        self.args = _Args(runtime=self._runtime, dtype=dtype, **kwargs)
        build = kwargs.get("build_config")
        self._max_num_tokens = kwargs.get("max_num_tokens") or (build.max_num_tokens if build else 8192)
        max_seq_len = kwargs.get("max_seq_len") or (build.max_seq_len if build else None) or int(config.get("max_position_embeddings", 2048))
        max_batch_size = kwargs.get("max_batch_size") or (build.max_batch_size if build else 2048)
        self._max_seq_len = max_seq_len
        self._executor: _Executor | None = _Executor(max_batch_size, max_seq_len, self._end_id, int(config.get("vocab_size", 32000)))

    def generate_async(self, inputs: Any, sampling_params: SamplingParams | None = None, streaming: bool = False, **kwargs: Any) -> RequestOutput:
        if self._executor is None:
            raise RuntimeError("LLM is shutting down")
        if isinstance(inputs, dict) and "prompt_token_ids" in inputs:
            prompt = list(inputs["prompt_token_ids"])
        elif isinstance(inputs, list) and all(isinstance(i, int) for i in inputs):
            prompt = list(inputs)
        else:
            raise TypeError("this stand-in takes token ids only: lem must pass token ids, never text")
        sampling_params = sampling_params or SamplingParams()
        if sampling_params.end_id is None:
            sampling_params.end_id = self._end_id  # _setup from the tokenizer, in the real LLM
            sampling_params.pad_id = self._end_id
        if self._runtime == "pytorch":
            if len(prompt) > self._max_num_tokens:
                raise ValueError(f"The sum of prompt length ({len(prompt)}), query length (0) should not exceed max_num_tokens ({self._max_num_tokens})")
        elif len(prompt) + sampling_params.max_tokens > self._max_seq_len:
            raise ValueError(f"The sum of prompt length ({len(prompt)}) and query length (0) max_tokens ({sampling_params.max_tokens}) should not exceed max_seq_len ({self._max_seq_len})")
        return self._executor.submit(prompt, sampling_params, streaming)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None


class _Args:
    def __init__(self, runtime: str, dtype: str, **kwargs: Any) -> None:
        self.backend = runtime
        self.dtype = dtype
        for key, value in kwargs.items():
            setattr(self, key, value)


class _TorchLLM(BaseLLM):
    def __init__(self, model: str | Path, **kwargs: Any) -> None:
        trt_only = set(TrtLlmArgs.model_fields) - set(TorchLlmArgs.model_fields)
        rejected = [key for key in kwargs if key in trt_only]
        if rejected:
            raise ValueError(
                f"The following arguments are specific to TensorRT backend and cannot be used with PyTorch backend: {rejected}.\n"
                "Please use 'from tensorrt_llm._tensorrt_engine import LLM' instead to use the TensorRT backend."
            )
        super().__init__(model, **kwargs)


class LLM(_TorchLLM):
    pass


class _TrtLLM(BaseLLM):
    _args_class = TrtLlmArgs
    _runtime = "tensorrt"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
