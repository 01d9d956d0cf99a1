"""A stand-in for vLLM 0.33.0, implementing exactly the API surface lem.backends.vllm uses.

Followed from the vllm 0.33.0 wheel's source: ``vllm/__init__.py`` (exports),
``engine/arg_utils.py`` (``EngineArgs`` field names and defaults), ``entrypoints/llm.py``
(``LLM(model, **kwargs)`` → ``EngineArgs(**kwargs)``, ``disable_log_stats`` defaulting to True,
``llm_engine``), ``v1/engine/llm_engine.py`` and ``v1/engine/input_processor.py``
(``add_request(request_id: str, prompt, params)`` taking a rendered ``{"type": "token", ...}``
input or a raw ``TokensPrompt``, refusing prompts as long as ``max_model_len``; ``step()``,
``abort_request``, ``has_unfinished_requests``), ``v1/engine/output_processor.py``
(DELTA/CUMULATIVE/FINAL_ONLY outputs, ``stream_interval``, the external request id on outputs),
``v1/core/sched/utils.py::check_stop`` (EOS, stop_token_ids, max_tokens, max_model_len and
min_tokens, in vLLM's order), ``v1/metrics/stats.py`` (``RequestStateStats``; engine-core
timestamps from ``time.monotonic``) and ``outputs.py`` (``RequestOutput``, ``CompletionOutput``).

The "model" is a deterministic function of the prompt: it emits its EOS every L tokens (L from
2 to 6, set by the prompt), so a request naturally ends after L tokens; ``ignore_eos`` and
``min_tokens`` suppress the EOS as vLLM's logits processors do. Every ``step`` sleeps
``STEP_S`` (the forward pass) and gives each running request one token; at most
``max_num_seqs`` run at once, the rest wait in FCFS order.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypedDict

from .sampling_params import RequestOutputKind, SamplingParams, VLLMValidationError

__version__ = "0.33.0"
__all__ = ["LLM", "EngineArgs", "SamplingParams", "TokensPrompt", "RequestOutput", "CompletionOutput", "LLMEngine"]

STEP_S = 0.002  # simulated forward pass per engine step
CONSTRUCTED: list[EngineArgs] = []  # every engine built, for tests
ADDED: dict[str, dict[str, Any]] = {}  # request id -> when add_request ran, its prompt ids and params, for tests


class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: list[int]
    prompt: str


@dataclass
class EngineArgs:
    """The EngineArgs fields lem may set or pass through (names and defaults of vLLM 0.33)."""

    model: str = "Qwen/Qwen3-0.6B"
    tokenizer: str | None = None
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    pipeline_parallel_size: int = 1
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enable_prefix_caching: bool | None = None
    gpu_memory_utilization: float = 0.92
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    disable_log_stats: bool = False
    revision: str | None = None
    tokenizer_revision: str | None = None
    quantization: str | None = None
    enforce_eager: bool = False
    speculative_config: dict[str, Any] | None = None
    generation_config: str = "auto"
    async_scheduling: bool | None = None
    stream_interval: int = 1


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class RequestOutput:
    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int] | None,
        prompt_logprobs: Any,
        outputs: list[CompletionOutput],
        finished: bool,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.prompt_logprobs = prompt_logprobs
        self.outputs = outputs
        self.finished = finished
        self.metrics = metrics


@dataclass
class RequestStateStats:
    num_generation_tokens: int = 0
    arrival_time: float = 0.0  # frontend wall clock (time.time)
    queued_ts: float = 0.0  # engine core time.monotonic
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    first_token_latency: float = 0.0


@dataclass
class _Request:
    external_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    stats: RequestStateStats | None
    output_token_ids: list[int] = field(default_factory=list)
    sent: int = 0  # tokens already returned (DELTA / stream_interval bookkeeping)
    finish_reason: str | None = None
    stop_reason: int | None = None


class _EngineCoreClient:
    def __init__(self) -> None:
        self.is_shutdown = False

    def shutdown(self, timeout: float | None = None) -> None:
        self.is_shutdown = True


class _ModelConfig:
    def __init__(self, dtype: Any, max_model_len: int) -> None:
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.runner_type = "generate"


class LLMEngine:
    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        model_dir = Path(args.model)
        config = _read_json(model_dir / "config.json")
        self.generation_config = _read_json(model_dir / "generation_config.json")
        self.vocab_size = int(config.get("vocab_size", 32000))
        derived_max = int(config.get("max_position_embeddings", 2048))
        if args.max_model_len is not None and args.max_model_len > derived_max:
            raise ValueError(
                f"User-specified max_model_len ({args.max_model_len}) is greater than the derived max_model_len "
                f"(max_position_embeddings={derived_max} in model's config.json)."
            )
        eos = self.generation_config.get("eos_token_id", config.get("eos_token_id"))
        self.primary_eos: int | None = eos[0] if isinstance(eos, list) else eos
        self.model_config = _ModelConfig(_resolve_dtype(args.dtype, config), args.max_model_len or derived_max)
        self.log_stats = not args.disable_log_stats
        self.max_num_seqs = args.max_num_seqs or 256
        self.engine_core = _EngineCoreClient()
        self._waiting: list[_Request] = []
        self._running: list[_Request] = []
        self._by_id: dict[str, _Request] = {}

    def add_request(self, request_id: str, prompt: Any, params: SamplingParams, arrival_time: float | None = None, **kwargs: Any) -> str:
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a string, got {type(request_id)}")
        # A rendered EngineInput ({"type": "token", ...}) goes straight in; a raw TokensPrompt goes through
        # the renderer (deprecated in 0.33). Text prompts are refused here: lem must send token ids.
        if not isinstance(prompt, dict) or "prompt_token_ids" not in prompt or prompt.get("type", "token") != "token":
            raise TypeError("this stand-in takes token inputs only: lem must pass token ids, never text")
        ids = [int(i) for i in prompt["prompt_token_ids"]]
        if not ids:
            raise VLLMValidationError("The decoder prompt cannot be empty")
        if len(ids) >= self.model_config.max_model_len:
            raise VLLMValidationError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of {self.model_config.max_model_len}."
            )
        if request_id in self._by_id:
            raise ValueError(f"request {request_id} is already running")
        params = params.clone()
        params.update_from_generation_config(self.generation_config, self.primary_eos)
        stats = RequestStateStats(arrival_time=time.time(), queued_ts=time.monotonic()) if self.log_stats else None
        request = _Request(request_id, ids, params, stats)
        self._by_id[request_id] = request
        self._waiting.append(request)
        ADDED[request_id] = {"time": time.perf_counter(), "prompt_token_ids": ids, "params": params, "rendered": "type" in prompt}
        return request_id

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        for request_id in request_ids:
            request = self._by_id.pop(request_id, None)
            if request is not None:
                for queue in (self._waiting, self._running):
                    if request in queue:
                        queue.remove(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self._by_id)

    def get_num_unfinished_requests(self) -> int:
        return len(self._by_id)

    def step(self) -> list[RequestOutput]:
        while self._waiting and len(self._running) < self.max_num_seqs:
            request = self._waiting.pop(0)
            if request.stats is not None:
                request.stats.scheduled_ts = time.monotonic()
            self._running.append(request)
        if not self._running:
            return []
        time.sleep(STEP_S)  # the forward pass for every running request
        now = time.monotonic()
        outputs: list[RequestOutput] = []
        for request in list(self._running):
            request.output_token_ids.append(self._next_token(request))
            if request.stats is not None:
                if request.stats.first_token_ts == 0.0:
                    request.stats.first_token_ts = now
                    request.stats.first_token_latency = time.time() - request.stats.arrival_time
                request.stats.last_token_ts = now
                request.stats.num_generation_tokens += 1
            finished = self._check_stop(request)
            if finished:
                self._running.remove(request)
                del self._by_id[request.external_id]
            output = self._make_output(request, finished)
            if output is not None:
                outputs.append(output)
        return outputs

    # -- the fake model and vLLM's bookkeeping -----------------------------------------------------

    def _next_token(self, request: _Request) -> int:
        params = request.params
        position = len(request.output_token_ids)
        natural_length = 2 + sum(request.prompt_token_ids) % 5
        stop_ids = params.all_stop_token_ids
        masked = params.ignore_eos or position < params.min_tokens  # vLLM's min_tokens / ignore_eos masking
        if (position + 1) % natural_length == 0 and self.primary_eos is not None and not masked:
            return self.primary_eos
        mix = 0 if params.temperature < 1e-5 else self.args.seed * 7 + 1
        token = 5 + (sum(request.prompt_token_ids) * 31 + position * 17 + mix) % max(1, self.vocab_size - 5)
        while token in stop_ids or token == self.primary_eos:
            token = 5 + (token + 1 - 5) % max(1, self.vocab_size - 5)
        return token

    def _check_stop(self, request: _Request) -> bool:
        params = request.params
        last = request.output_token_ids[-1]
        if last == params.eos_token_id:
            request.finish_reason = "stop"
            return True
        if last in (params.stop_token_ids or ()):
            request.finish_reason, request.stop_reason = "stop", last
            return True
        total = len(request.prompt_token_ids) + len(request.output_token_ids)
        if total >= self.model_config.max_model_len or len(request.output_token_ids) >= (params.max_tokens or 1 << 30):
            request.finish_reason = "length"
            return True
        return False

    def _make_output(self, request: _Request, finished: bool) -> RequestOutput | None:
        kind = request.params.output_kind
        if kind is RequestOutputKind.FINAL_ONLY and not finished:
            return None
        interval = max(self.args.stream_interval, request.params.stream_interval or 1)
        unsent = len(request.output_token_ids) - request.sent
        if not finished and request.sent > 0 and unsent < interval:
            return None  # stream_interval: held back until enough tokens accumulated
        if kind is RequestOutputKind.DELTA:
            token_ids = request.output_token_ids[request.sent :]
        else:
            token_ids = list(request.output_token_ids)
        request.sent = len(request.output_token_ids)
        text = " ".join(map(str, token_ids)) if request.params.detokenize else ""
        completion = CompletionOutput(
            index=0,
            text=text,
            token_ids=token_ids,
            cumulative_logprob=None,
            logprobs=None,
            finish_reason=request.finish_reason if finished else None,
            stop_reason=request.stop_reason if finished else None,
        )
        return RequestOutput(
            request_id=request.external_id,
            prompt=None,
            prompt_token_ids=request.prompt_token_ids,
            prompt_logprobs=None,
            outputs=[completion],
            finished=finished,
            metrics=request.stats,
        )


class LLM:
    def __init__(self, model: str, **kwargs: Any) -> None:
        if "disable_log_stats" not in kwargs:
            kwargs["disable_log_stats"] = True
        engine_args = EngineArgs(model=model, **kwargs)  # TypeError for an unknown keyword, like vLLM
        CONSTRUCTED.append(engine_args)
        self.llm_engine = LLMEngine(engine_args)
        self.model_config = self.llm_engine.model_config


def engine_arg_names() -> set[str]:
    return {f.name for f in fields(EngineArgs)}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _resolve_dtype(requested: str, config: dict[str, Any]) -> Any:
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    checkpoint = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    # As vLLM: "auto" serves a float32 checkpoint in half precision (bfloat16 where supported).
    return torch.bfloat16 if checkpoint == "float32" else getattr(torch, checkpoint)
