"""The llama.cpp engine adapter (llama-cpp-python), for GGUF models on a CPU (or CUDA with n_gpu_layers).

Equal terms with the other engines:

- Tokens: every engine gets the same ``PreparedRequest.input_ids`` from the Hugging Face tokenizer
  of ``model.name_or_path``; they are fed to llama.cpp as ids (its own tokenizer is never used).
  At load the GGUF's vocabulary is compared with that tokenizer id by id, and a mismatch is refused
  (gguf.py, with the other GGUF helpers).
- Decoding: lem's sampler chain is built from llama.cpp's C samplers in Hugging Face's order
  (EOS mask for min/ignore_eos → repetition penalty over prompt + output → temperature →
  top-k → top-p → draw), instead of llama-cpp-python's default chain (top-k → typical → top-p
  → min-p → temperature, min_p=0.05), which would decode differently: sampler.py.
- Scheduling: llama-cpp-python's ``Llama`` decodes one sequence at a time, so lem's batches cannot
  be honoured. The adapter schedules requests itself (``scheduling = "serial"``: lem hands it every
  request at its arrival time) and serves them one after another in arrival order: each request
  runs alone, its queueing shows in TTFT, and the records carry no batch (batch_id null).
- No prefix reuse: llama-cpp-python would keep the KV cache of the previous prompt's common
  prefix (the chat template's system turn); the adapter resets it so every request evaluates
  its whole prompt, as the other engines do.

``llama_cpp`` is imported in ``init_engine`` only (sampler.py and gguf.py never import it), so
``python -m lem --help`` stays instant.
"""

from __future__ import annotations

import gc
import inspect
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from lem.backends.base import (
    EngineDescription,
    EngineSpec,
    LoadedTokenizer,
    RawGeneration,
)
from lem.backends.llama_cpp.gguf import (
    c_string,
    check_vocabulary,
    eos_token_ids,
    ftype_name,
    gguf_config_dir,
    llama_cpp_version,
)
from lem.backends.llama_cpp.sampler import SamplerChains, eos_mask_until, request_seed
from lem.errors import ConfigError, LemError, first_line
from lem.workload.types import GenerationParams, PreparedRequest

if TYPE_CHECKING:
    from lem.workload.admission import Admission
    from lem.workload.steps import StepLog

INSTALL_HINT = 'pip install -e ".[llamacpp]" (compiles llama.cpp from source: about 9 minutes on 2 cores)'
SCHEDULING = "sequential: one request at a time in arrival order (llama-cpp-python decodes one sequence); batching.* not applied"
# Llama(...) arguments lem sets from its own keys; llama_args may not set them a second time.
NAMED_ARGS = {"model_path": "model_path", "n_threads": "n_threads", "n_batch": "n_batch", "n_ctx": "n_ctx",
              "n_gpu_layers": "n_gpu_layers", "flash_attn": "flash_attn"}
# Llama(...) arguments that would break lem's measurement or its token accounting.
REFUSED_ARGS = {
    "logits_all": "logits for every prompt position cost time lem would attribute to decoding",
    "embedding": "embedding mode generates no tokens",
    "draft_model": "speculative decoding is not wired into lem's token timing",
    "tokenizer": "lem feeds token ids from the Hugging Face tokenizer; the GGUF's own is not used",
    "chat_format": "lem applies the chat template itself, once, for every engine",
    "chat_handler": "lem applies the chat template itself, once, for every engine",
}


# -- engine-independent mapping (no llama_cpp import: unit-testable without the package) ------


def context_tokens(spec: EngineSpec) -> int:
    """The context llama.cpp allocates: backend.llama_cpp.n_ctx, else the longest request lem can send."""
    lc = spec.options
    return lc.n_ctx if lc.n_ctx is not None else spec.max_input_tokens + spec.max_output_tokens


def llama_kwargs(spec: EngineSpec, gguf_path: str) -> dict[str, Any]:
    """The ``Llama(...)`` arguments for this config: lem's named keys over the ``llama_args`` passthrough."""
    lc = spec.options
    kwargs: dict[str, Any] = {"verbose": False}  # llama.cpp's load log would bury the run's output
    kwargs.update(lc.llama_args)
    kwargs.update(
        model_path=gguf_path,
        n_ctx=context_tokens(spec),
        n_batch=lc.n_batch,
        n_gpu_layers=lc.n_gpu_layers,
        flash_attn=lc.flash_attn,
    )
    if lc.n_threads is not None:
        kwargs["n_threads"] = lc.n_threads
        # Prefill threads follow n_threads unless set apart: one thread count, as torch.set_num_threads gives.
        kwargs.setdefault("n_threads_batch", lc.n_threads)
    return kwargs


# -- the adapter ----------------------------------------------------------------------------


class LlamaCppBackend(LoadedTokenizer):
    """``ContinuousBackend`` for llama-cpp-python: one request at a time, every token timed as it is sampled."""

    scheduling = "serial"  # lem's batches do not apply: this adapter serves requests itself, one by one

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._lib: Any = None  # the llama_cpp module
        self._llm: Any = None
        self._gguf_path: str | None = None
        self._hf_dir: str | None = None  # tokenizer and config for FLOPs
        self._kwargs: dict[str, Any] = {}
        self._n_ctx: int | None = None
        self._n_vocab = 0
        self._version = ""

    # -- phases -------------------------------------------------------------------------

    def init_engine(self) -> None:
        try:
            import llama_cpp  # loads libllama and libggml: this engine's start-up cost
        except ImportError as e:
            raise LemError(f"backend=llama_cpp needs the 'llama_cpp' package: {INSTALL_HINT} ({e})") from e
        self._lib = llama_cpp
        self._version = llama_cpp_version(llama_cpp)
        lc = self.spec.options
        if lc.n_gpu_layers != 0 and not llama_cpp.llama_supports_gpu_offload():
            raise ConfigError(
                "backend.llama_cpp.n_gpu_layers", lc.n_gpu_layers,
                '0: this llama-cpp-python build has no GPU offload (rebuild it: CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python)',
            )
        llama_cpp.llama_backend_init()

    def load_model(self) -> None:
        if self._lib is None:
            self.init_engine()
        from lem.models.resolve import resolve_model_path

        gguf = self._gguf_file()
        hf_dir = resolve_model_path(self.spec.model)
        tokenizer, config_dir = self._hf_tokenizer(hf_dir, gguf)
        kwargs = llama_kwargs(self.spec, str(gguf))
        self._check_passthrough(kwargs)
        try:
            llm = self._lib.Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as e:
            raise LemError(f"backend.llama_cpp.model_path={gguf}: llama.cpp could not load it: {first_line(e)}") from e
        try:
            n_vocab = check_vocabulary(self._lib, llm, tokenizer, str(gguf), self.spec.model.name_or_path)
        except BaseException:
            llm.close()
            raise
        self._llm, self._tokenizer, self._kwargs = llm, tokenizer, kwargs
        self._gguf_path, self._hf_dir = str(gguf), config_dir
        self._n_ctx, self._n_vocab = int(llm.n_ctx()), n_vocab
        self._eos_ids = eos_token_ids(tokenizer, hf_dir)

    def generate(self, batch: Sequence[PreparedRequest], params: GenerationParams) -> list[RawGeneration]:
        """Serve ``batch`` (warmup) one request after another; each RawGeneration starts when its request did."""
        return [self._generate_one(request, params) for request in batch]

    def serve(self, admission: Admission, params: GenerationParams, steps: StepLog) -> Iterator[RawGeneration]:
        """One at a time in arrival order (``admission`` holds at most one in flight): a request waits
        (queueing, in its TTFT) until the previous one ends."""
        steps.source = "lem serial handovers"
        while not admission.done:
            now = time.perf_counter()
            due = admission.due(now)
            if not due:
                time.sleep(admission.wait_s(now))  # open loop: nothing has arrived yet
                continue
            for handover in due:
                started = time.perf_counter()
                raw = self._generate_one(handover.request, params)
                raw.arrival_time = handover.arrival_time
                steps.add(started, 1, admission.queued(started), max(1, len(raw.output_token_ids)))
                admission.finished(handover.request.request_id)
                yield raw

    def synchronize(self) -> None:
        if self._llm is not None and self._lib is not None:
            self._lib.llama_synchronize(self._llm.ctx)  # GPU offload: queued work done before a window closes

    def describe(self) -> EngineDescription:
        from lem.backends.pytorch.engine import cpu_name

        lc = self.spec.options
        on_gpu = lc.n_gpu_layers != 0
        device_names = [cpu_name()]
        if on_gpu:
            import torch  # only for the GPU's name; a CUDA run has torch's CUDA build beside it

            device_names = [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cuda"]
        extra: dict[str, Any] = {
            "model_path": self._hf_dir,  # the Hugging Face config the FLOPs count reads
            "gguf_path": self._gguf_path,
            "llama_args": {k: v for k, v in self._kwargs.items() if k != "model_path"},
            "scheduling": SCHEDULING,
            "max_concurrent_requests": 1,
            "prefix_cache_reuse": False,
            "use_cache": True,  # llama.cpp always decodes over its KV cache
            "token_ids": "Hugging Face tokenizer of model.name_or_path (vocabulary checked against the GGUF)",
            "sampler_order": "eos mask, repetition penalty (prompt + output), temperature, top_k, top_p, draw",
        }
        dtype = "gguf"
        num_threads = lc.n_threads
        llm = self._llm
        if llm is not None:
            lib = self._lib
            file_type = llm.metadata.get("general.file_type")
            dtype = ftype_name(lib, file_type) or f"gguf file_type {file_type}"
            extra.update(
                gguf_file_type=dtype,
                gguf_size_bytes=Path(self._gguf_path).stat().st_size if self._gguf_path else None,
                num_parameters=int(lib.llama_model_n_params(llm.model)),
                n_ctx=self._n_ctx,
                n_batch=int(llm.n_batch),
                n_threads=int(llm.n_threads),
                n_threads_batch=int(llm.n_threads_batch),
                system_info=lib.llama_print_system_info().decode("utf-8", "replace").strip(),
                ggml_commit=c_string(lib, "ggml_commit"),
            )
            num_threads = int(llm.n_threads)
        return EngineDescription(
            engine="llama_cpp",
            engine_version=self._version or "llama-cpp-python (not loaded)",
            device_type="cuda" if on_gpu else "cpu",
            device_names=device_names,
            dtype=dtype,
            num_threads=num_threads,
            extra=extra,
        )

    def unload(self) -> None:
        if self._llm is not None:
            self._llm.close()
        self._llm = None
        gc.collect()

    # -- protocol properties --------------------------------------------------------------

    # -- helpers --------------------------------------------------------------------------

    def _generate_one(self, request: PreparedRequest, params: GenerationParams) -> RawGeneration:
        llm, lib = self._llm, self._lib
        if llm is None:
            raise RuntimeError("load_model() must run before generate()")
        prompt = list(request.input_ids)
        if not prompt:
            raise LemError(f"request {request.request_id} has no input tokens; every prompt needs at least one")
        needed = len(prompt) + params.max_output_tokens
        if self._n_ctx is not None and needed > self._n_ctx:
            raise ConfigError(
                "backend.llama_cpp.n_ctx", self.spec.options.n_ctx,
                f">= {needed} (request {request.request_id}: {len(prompt)} input + {params.max_output_tokens} output tokens; "
                f"the loaded context holds {self._n_ctx}; set it, or run.reuse_engine=false in a sweep that raises the lengths)",
            )
        seed = request_seed(params, request.request_id)
        masked_until = eos_mask_until(params)
        chains = SamplerChains(lib, params, sorted(self._eos_ids), self._n_vocab, needed, seed, masked_until)
        try:
            chains.accept_prompt(prompt)
            llm.reset()  # no KV reuse from the previous request: every prompt is evaluated whole
            ids: list[int] = []
            times: list[float] = []
            start = time.perf_counter()
            llm.eval(prompt)  # prefill
            for step in range(params.max_output_tokens):
                token = chains.sample(llm.ctx, step)
                times.append(time.perf_counter())  # the token exists on the host now
                ids.append(token)
                if token in self._eos_ids and step >= masked_until:
                    break  # the EOS counts (it cost a forward pass); count_output_tokens stops at it too
                if step + 1 < params.max_output_tokens:
                    llm.eval([token])
        finally:
            chains.free()
        return RawGeneration(request_id=request.request_id, output_token_ids=ids, token_times=times, start_time=start)

    def _gguf_file(self) -> Path:
        path = self.spec.options.model_path
        if path is None:
            from lem.models.embedded import find_embedded_gguf

            return find_embedded_gguf().gguf_path
        return Path(path).expanduser()

    def _hf_tokenizer(self, hf_dir: str, gguf: Path) -> tuple[Any, str | None]:
        """The Hugging Face tokenizer of ``model.name_or_path`` and the directory of its config.json.

        A directory that holds only the GGUF: transformers reads tokenizer and config from the
        GGUF itself; the config is saved beside lem's cache so the FLOPs count can read it.
        """
        import transformers
        from transformers import AutoTokenizer

        transformers.utils.logging.disable_progress_bar()
        model_cfg = self.spec.model
        local = Path(hf_dir)
        common: dict[str, Any] = {"trust_remote_code": model_cfg.trust_remote_code}
        if model_cfg.revision and not local.is_dir():
            common["revision"] = model_cfg.revision
        from_gguf = local.is_dir() and not any((local / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
        try:
            if from_gguf:
                if gguf.parent.resolve() != local.resolve():
                    raise LemError(
                        f"model.name_or_path={model_cfg.name_or_path}: holds no tokenizer; point it at the directory "
                        f"holding backend.llama_cpp.model_path ({gguf.parent}) or at the model's Hugging Face id"
                    )
                tokenizer = AutoTokenizer.from_pretrained(str(local), gguf_file=gguf.name)
                return tokenizer, gguf_config_dir(local, gguf)
            tokenizer = AutoTokenizer.from_pretrained(hf_dir, **common)
        except (OSError, ValueError, ImportError) as e:
            raise LemError(f"model.name_or_path={model_cfg.name_or_path}: could not load its tokenizer: {first_line(e)}") from e
        return tokenizer, hf_dir

    def _check_passthrough(self, kwargs: dict[str, Any]) -> None:
        """``llama_args`` keys must be Llama(...) arguments (it swallows unknown ones silently) and not clash with lem's."""
        lc = self.spec.options
        accepted = set(inspect.signature(self._lib.Llama.__init__).parameters) - {"self", "kwargs"}
        for key in lc.llama_args:
            if key in NAMED_ARGS:
                raise ConfigError(f"backend.llama_cpp.llama_args.{key}", lc.llama_args[key], f"no value here: set backend.llama_cpp.{NAMED_ARGS[key]}")
            if key in REFUSED_ARGS:
                raise ConfigError(f"backend.llama_cpp.llama_args.{key}", lc.llama_args[key], f"no value here: {REFUSED_ARGS[key]}")
            if key not in accepted:
                raise ConfigError(f"backend.llama_cpp.llama_args.{key}", lc.llama_args[key], f"a Llama(...) argument of {self._version}: {', '.join(sorted(accepted))}")
