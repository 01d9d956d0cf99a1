"""The OpenAI-compatible server adapter: lem's workload, arrivals and token accounting, sent over HTTP.

Equal terms with the embedded engines:

- Prompts: the same ``PreparedRequest`` as every engine — as token ids where the server takes them
  (vLLM, SGLang, TensorRT-LLM), else as the templated text, whose token count the server reports
  (its tokenize endpoint, or the stream's usage) and lem checks against its own tokenizer.
- Arrivals and concurrency: ``lem.workload.admission`` hands each request over at its arrival time
  with at most ``batching.batch_size`` in flight (open loop); a request waiting in lem's queue or the
  server's is queueing, in its TTFT.
- Tokens: every chunk is timed when it reaches lem. Output tokens are the server's streamed token ids
  where it sends them, else lem's tokenizer on the streamed text, each token timed by the chunk that
  completed it, plus the EOS id when the server says the model stopped (``finish_reason`` "stop"):
  the EOS was generated and cost a step, as the embedded engines count it. Counting then follows
  ``lem.workload.tokens`` as for every engine. The server's own count (usage) is compared where sent.
- Setup: with ``launch=true``, engine init is starting the server's process and model load is
  waiting until ``GET /models`` answers (import, weights, KV cache, compile): the server's start-up
  energy, measured. It is stopped after the job (also on failure), its log kept as ``server.log``.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from lem.backends.base import (
    EngineDescription,
    EngineSpec,
    LoadedTokenizer,
    RawGeneration,
    serve_together,
)
from lem.backends.openai.client import (
    ServerAnswered,
    Streamed,
    StreamingClient,
    auth_headers,
    get_json,
    post_json,
)
from lem.backends.openai.config import OutputTokens, PromptFormat, choose_served_model
from lem.backends.openai.presets import PRESETS, Launch
from lem.backends.openai.server import ServerProcess, free_port, port_in_use
from lem.errors import ConfigError, LemError

if TYPE_CHECKING:
    from lem.workload.admission import Admission
    from lem.workload.steps import StepLog
    from lem.workload.types import GenerationParams, PreparedRequest

log = logging.getLogger("lem")

HOST = "127.0.0.1"
MAX_CONNECTIONS = 1024
PROMPT_CHECKS = 8  # text prompts whose token count is asked of the server's tokenizer (the first served)
# A text prompt's token count may differ this much from lem's (two tokenizers of one model can split runs of
# whitespace differently: llama.cpp's and Hugging Face's for SmolLM2 on "\n\n"); more is another model's tokenizer.
PROMPT_COUNT_SLACK = 0.05
PROMPT_COUNT_SLACK_TOKENS = 2
WAIT_SLICE_S = 0.5  # the serve loop wakes at least this often (Ctrl-C, arrivals)


class OpenAIBackend(LoadedTokenizer):
    """``ContinuousBackend`` over HTTP: lem hands requests over as its admission says, the server schedules them."""

    scheduling = "continuous"

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        o = spec.options
        self.preset = PRESETS[o.preset]
        self.prompt_ids = o.prompt_format is PromptFormat.token_ids or (o.prompt_format is PromptFormat.auto and self.preset.token_id_prompts)
        self.ids_out = o.output_tokens is OutputTokens.token_ids or (o.output_tokens is OutputTokens.auto and self.preset.streams_token_ids)
        self._headers: dict[str, str] = {}
        self._server: ServerProcess | None = None
        self._client: StreamingClient | None = None
        self._base_url = o.base_url or ""
        self._served_model = o.model
        self._model_path: str | None = None
        self._server_version: str | None = None
        self._checked_prompts = 0
        self._usage_disagreements = 0
        self._prompt_count_differences = 0

    # -- phases -------------------------------------------------------------------------

    def init_engine(self) -> None:
        """lem's tokenizer, then, launched, the server's process started (a running server is asked what it serves in load_model)."""
        from lem.backends.hf_files import load_hf_tokenizer

        o = self.spec.options
        self._model_path, self._tokenizer, self._eos_ids = load_hf_tokenizer(self.spec.model)
        self._headers = auth_headers(o.api_key_env)
        if not o.launch:
            return
        port = o.port or free_port(HOST)
        if port_in_use(HOST, port):
            raise ConfigError("backend.openai.port", port, f"a free port (something already listens on {HOST}:{port})")
        self._base_url = f"http://{HOST}:{port}/v1"
        default_name = Path(self._model_path).name if self.preset.served_name_is_directory and o.server_command is None else self.spec.model.name_or_path
        self._served_model = o.model or default_name
        at = Launch(HOST, port, self._served_model, self._model_path, sys.executable)
        command, env = self._command(at)
        self._server = ServerProcess(command, {**env, **o.server_env}, self.preset.label if o.server_command is None else "server")
        self._server.start()

    def load_model(self) -> None:
        """Launched: wait until the server answers (its whole start-up). Then pick the served model and open the connections."""
        o = self.spec.options
        if self._server is not None:
            self._server.wait_ready(self._answers, o.startup_timeout_s, f"GET {self._url('/models')}")
        self._served_model = choose_served_model(self._base_url, self._headers, self._served_model)
        self._server_version = self._version()
        self._client = StreamingClient(self._base_url, self._headers, o.request_timeout_s, MAX_CONNECTIONS)

    def generate(self, batch: Sequence[PreparedRequest], params: GenerationParams) -> list[RawGeneration]:
        return serve_together(self, batch, params)

    def serve(self, admission: Admission, params: GenerationParams, steps: StepLog) -> Iterator[RawGeneration]:
        client = self._require_client()
        steps.source = "not visible: the server schedules requests itself"
        client.drain()
        self._check_prompt_counts(admission.requests)
        fields = self._fields(params)
        live: dict[int, PreparedRequest] = {}
        arrivals: dict[int, float] = {}
        try:
            while not admission.done:
                now = time.perf_counter()
                for handover in admission.due(now):
                    request = handover.request
                    live[request.request_id] = request
                    arrivals[request.request_id] = handover.arrival_time
                    client.submit(request.request_id, self._body(request, fields))
                if not live:
                    time.sleep(min(admission.wait_s(now), WAIT_SLICE_S))
                    continue
                waiting_for_room = admission.queued(now) > 0
                timeout = WAIT_SLICE_S if waiting_for_room else min(max(admission.wait_s(now), 1e-4), WAIT_SLICE_S)
                try:
                    streamed = client.done.get(timeout=timeout)
                except queue.Empty:
                    continue
                request = live.pop(streamed.request_id)
                client.forget(streamed.request_id)
                admission.finished(streamed.request_id)
                yield self._raw(streamed, request, arrivals.pop(streamed.request_id), params)
        finally:
            if live:
                client.cancel_all()  # a consumer that stopped early (or a failed request) leaves nothing running

    def synchronize(self) -> None:
        """Nothing to wait for: a request's last chunk has reached lem when it is reported finished."""

    def describe(self) -> EngineDescription:
        from lem.backends.pytorch.engine import cpu_name
        from lem.config.rules import resolve_device
        from lem.config.types import Device

        o = self.spec.options
        on_gpu = resolve_device(self.spec.device) is Device.cuda
        if on_gpu:
            from lem.backends.cuda import cuda_device_names

            device_names = cuda_device_names(o.num_gpus)
        else:
            device_names = [cpu_name()]
        extra: dict[str, Any] = {
            "preset": o.preset.value,
            "server": self.preset.label,
            "base_url": self._base_url,
            "served_model": self._served_model,
            "launched": self._server is not None,
            "server_command": self._server.command if self._server is not None else None,
            "server_ready_s": self._server.ready_s if self._server is not None else None,
            "model_path": self._model_path,  # the tokenizer and the Hugging Face config the FLOPs count reads
            "prompt": "token ids (the same ids as every engine)" if self.prompt_ids else "templated text (token count checked against the server's tokenizer)",
            "output_tokens": "the server's streamed token ids" if self.ids_out else "lem's tokenizer on the streamed text, + the EOS id when finish_reason is stop",
            "token_times": "host perf_counter when each streamed chunk reached lem (a chunk of several tokens times them all)",
            "engine_steps": "not visible: the server schedules requests itself",
            "setup_phases": (
                "engine_init: lem's tokenizer and the server process started; model_load: until GET /models answered"
                if self._server is not None else "the server was already running: no setup measured"
            ),
            "notes": list(self.preset.notes),
            "use_cache": True,
        }
        return EngineDescription(
            engine="openai",
            engine_version=self._server_version or "unknown (the server does not say)",
            device_type="cuda" if on_gpu else "cpu",
            device_names=device_names,
            dtype=self._dtype(),
            num_threads=None,
            extra=extra,
        )

    def artefacts(self) -> dict[str, str]:
        """Files to keep in the run folder: the launched server's log."""
        return {"server.log": str(self._server.log_path)} if self._server is not None else {}

    def unload(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    # -- helpers ------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self._base_url.rstrip("/") + path

    def _root(self) -> str:
        return self._base_url.rstrip("/").removesuffix("/v1")

    def _answers(self) -> bool:
        try:
            get_json(self._url("/models"), self._headers, timeout_s=2.0)
            return True
        except ServerAnswered:
            return False

    def _require_client(self) -> StreamingClient:
        if self._client is None:
            raise RuntimeError("load_model() must run before serve()")
        return self._client

    def _command(self, at: Launch) -> tuple[list[str], dict[str, str]]:
        o = self.spec.options
        if o.server_command is None:
            assert self.preset.command is not None  # config.check refused a launch without one
            return self.preset.command(self.spec, at)
        gguf = self.spec.backend_config.llama_cpp.model_path if self.spec.backend_config is not None else None
        values = {"host": at.host, "port": str(at.port), "model": at.served_model, "model_path": at.model_path,
                  "gguf": gguf or "", "python": at.python}
        return [part.format_map(values) for part in o.server_command], {}

    def _version(self) -> str | None:
        try:
            answer = get_json(self._root() + "/version", self._headers, timeout_s=2.0)
            if isinstance(answer, dict) and answer.get("version"):
                return f"{self.preset.label} {answer['version']}"
        except ServerAnswered:
            pass
        return self.preset.version() if self._server is not None else None

    def _dtype(self) -> str:
        o = self.spec.options
        if self._server is not None and o.server_command is None and o.preset.value == "vllm":
            from lem.backends.vllm.config import installed_vllm_build
            from lem.backends.vllm.engine import resolved_dtype

            return resolved_dtype(self.spec.precision.dtype.value, installed_vllm_build() == "cpu")
        if self._server is not None and o.server_command is None and o.preset.value == "llamacpp":
            return "GGUF's own"
        return self.spec.precision.dtype.value if self.spec.precision.dtype.value != "auto" else "server's own"

    def _fields(self, params: GenerationParams) -> dict[str, Any]:
        fields = self.preset.fields(params, self._eos_ids, self.ids_out)
        fields.update(self.spec.options.extra_body)
        fields.update(model=self._served_model, stream=True, stream_options={"include_usage": True}, n=1)
        return fields

    def _body(self, request: PreparedRequest, fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "prompt": list(request.input_ids) if self.prompt_ids else request.text}

    def _check_prompt_counts(self, requests: Sequence[PreparedRequest]) -> None:
        """Text prompts: the server's tokenizer must count what lem's counts (the first few requests, before any is sent)."""
        if self.prompt_ids or self.preset.tokenize is None or self._checked_prompts >= PROMPT_CHECKS:
            return
        for request in requests[: PROMPT_CHECKS - self._checked_prompts]:
            url, body = self.preset.tokenize(self._root(), self._served_model or "", request.text)
            tokens = post_json(url, self._headers, body).get("tokens")
            self._check_count(request, len(tokens) if isinstance(tokens, list) else None, url)
            self._checked_prompts += 1

    def _check_count(self, request: PreparedRequest, server_count: int | None, where: str) -> None:
        """The server's prompt token count against lem's: a small difference (two tokenizers of one model
        splitting whitespace differently) is warned about once; a large one means another model's tokenizer."""
        if server_count is None or server_count == request.input_tokens:
            return
        difference = abs(server_count - request.input_tokens)
        if difference > max(PROMPT_COUNT_SLACK_TOKENS, PROMPT_COUNT_SLACK * request.input_tokens):
            raise LemError(
                f"the server counted {server_count} prompt tokens for request {request.request_id} ({where}), lem's tokenizer "
                f"{request.input_tokens}: the server tokenises with another tokenizer; set model.name_or_path to the model it serves"
            )
        self._prompt_count_differences += 1
        if self._prompt_count_differences == 1:
            log.warning(
                "backend=openai: the server's tokenizer counts request %d's text prompt as %d tokens, lem's as %d (%s): "
                "records and FLOPs use lem's count; the server evaluates its own",
                request.request_id, server_count, request.input_tokens, where,
            )

    def _raw(self, streamed: Streamed, request: PreparedRequest, arrival: float, params: GenerationParams) -> RawGeneration:
        if streamed.error is not None:
            raise streamed.error
        usage = streamed.usage or {}
        if isinstance(usage.get("prompt_tokens"), int):
            self._check_count(request, usage["prompt_tokens"], "usage.prompt_tokens")
        if self.ids_out:
            ids, times = streamed_ids(streamed)
        else:
            ids, times = text_tokens(streamed, self.tokenizer)
        if len(ids) > params.max_output_tokens:
            # Re-tokenised text can come out a token longer than what was generated (two tokens merged back
            # differently); the server never generates more than max_tokens.
            last = times[-1]  # the whole text had arrived by the last chunk: so had the last generated token
            del ids[params.max_output_tokens:]
            del times[params.max_output_tokens:]
            times[-1] = last
        stopped = streamed.finish_reason == "stop" and not params.ignore_eos and len(ids) < params.max_output_tokens
        if stopped and self._eos_ids and not (ids and ids[-1] in self._eos_ids):
            # The model generated its EOS (it cost a step); the server sends no text for it.
            ids.append(min(self._eos_ids))
            times.append(streamed.finish_time or (times[-1] if times else time.perf_counter()))
        completion = usage.get("completion_tokens")
        if isinstance(completion, int) and completion not in (len(ids), len(ids) - 1 if stopped else -1):
            self._usage_disagreements += 1
            if self._usage_disagreements == 1:
                log.warning(
                    "backend=openai: the server counted %d output tokens for request %d, lem %d (%s); lem's count is reported",
                    completion, request.request_id, len(ids), "its token ids" if self.ids_out else "its tokenizer on the text",
                )
        return RawGeneration(
            request_id=request.request_id,
            output_token_ids=ids,
            token_times=times,
            start_time=streamed.sent_time,  # when lem sent it: the server's own scheduling is not visible
            padded_input_tokens=None,
            arrival_time=arrival,
        )


def streamed_ids(streamed: Streamed) -> tuple[list[int], list[float]]:
    """Output ids as the server streamed them, each timed by the chunk that brought it."""
    ids: list[int] = []
    times: list[float] = []
    for chunk in streamed.chunks:
        if chunk.token_ids is None:
            if chunk.text:
                raise LemError(
                    "the server streamed text without token ids (backend.openai.output_tokens=token_ids); "
                    "set backend.openai.output_tokens=text to count with lem's tokenizer"
                )
            continue
        ids.extend(chunk.token_ids)
        times.extend([chunk.time] * len(chunk.token_ids))
    return ids, times


def text_tokens(streamed: Streamed, tokenizer: Any) -> tuple[list[int], list[float]]:
    """The streamed text tokenised once by lem's tokenizer; each token timed by the chunk in which its last character arrived."""
    text = "".join(chunk.text for chunk in streamed.chunks)
    if not text:
        return [], []
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ends: list[int] = []  # the text offset at which each chunk ends
    total = 0
    for chunk in streamed.chunks:
        total += len(chunk.text)
        ends.append(total)
    ids = [int(t) for t in encoded["input_ids"]]
    times: list[float] = []
    chunk_index = 0
    for _, end in encoded["offset_mapping"]:
        while chunk_index < len(ends) - 1 and ends[chunk_index] < end:
            chunk_index += 1
        times.append(streamed.chunks[chunk_index].time)
    return ids, times
