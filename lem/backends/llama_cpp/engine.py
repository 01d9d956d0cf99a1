"""The llama.cpp engine adapter (llama-cpp-python), for GGUF models on a CPU (or CUDA with n_gpu_layers).

Equal terms with the other engines:

- Tokens: every engine gets the same ``PreparedRequest.input_ids`` from the Hugging Face tokenizer
  of ``model.name_or_path``; they are fed to llama.cpp as ids (its own tokenizer is never used).
  At load the GGUF's vocabulary is compared with that tokenizer id by id, and a mismatch is refused.
- Decoding: lem's sampler chain is built from llama.cpp's C samplers in Hugging Face's order
  (EOS mask for min/ignore_eos → repetition penalty over prompt + output → temperature →
  top-k → top-p → draw), instead of llama-cpp-python's default chain (top-k → typical → top-p
  → min-p → temperature, min_p=0.05), which would decode differently.
- Scheduling: llama-cpp-python's ``Llama`` decodes one sequence at a time, so lem's batches cannot
  be honoured. The adapter schedules requests itself (``scheduling = "serial"``: lem hands it every
  request at its arrival time) and serves them one after another in arrival order: each request
  runs alone, its queueing shows in TTFT, and the records carry no batch (batch_id null).
- No prefix reuse: llama-cpp-python would keep the KV cache of the previous prompt's common
  prefix (the chat template's system turn); the adapter resets it so every request evaluates
  its whole prompt, as the other engines do.

``llama_cpp`` is imported in ``init_engine`` only, so ``python -m lem --help`` stays instant.
"""

from __future__ import annotations

import gc
import importlib.metadata
import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from lem.backends.base import EngineSpec, EngineDescription, LoadedTokenizer, RawGeneration
from lem.errors import ConfigError, LemError, first_line
from lem.workload.types import GenerationParams, PreparedRequest

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


@dataclass(frozen=True)
class SamplerStep:
    """One llama.cpp C sampler: ``llama_sampler_init_<kind>(*args)``."""

    kind: str  # logit_bias | penalties | temp | top_k | top_p | greedy | dist
    args: tuple[Any, ...] = ()


def sampler_steps(
    params: GenerationParams,
    *,
    eos_ids: Sequence[int],
    mask_eos: bool,
    penalty_window_tokens: int,
    seed: int,
) -> list[SamplerStep]:
    """lem's decoding settings as a llama.cpp sampler chain, in Hugging Face ``generate``'s order.

    ``mask_eos``: EOS may not be drawn (min_output_tokens not reached yet, or ignore_eos — as
    in the PyTorch adapter, where min_new_tokens masks it). The repetition penalty covers the
    whole prompt and output (``penalty_window_tokens``), as Hugging Face's does.
    """
    steps: list[SamplerStep] = []
    if mask_eos and eos_ids:
        steps.append(SamplerStep("logit_bias", tuple((int(t), -math.inf) for t in sorted(eos_ids))))
    if params.repetition_penalty != 1.0:
        steps.append(SamplerStep("penalties", (penalty_window_tokens, float(params.repetition_penalty), 0.0, 0.0)))
    if not params.do_sample:
        steps.append(SamplerStep("greedy"))
        return steps
    if params.temperature != 1.0:
        steps.append(SamplerStep("temp", (float(params.temperature),)))
    if params.top_k > 0:
        steps.append(SamplerStep("top_k", (int(params.top_k),)))
    if params.top_p < 1.0:
        steps.append(SamplerStep("top_p", (float(params.top_p), 1)))  # min_keep 1, as Hugging Face's
    steps.append(SamplerStep("dist", (seed & 0xFFFFFFFF,)))
    return steps


def request_seed(params: GenerationParams, request_id: int) -> int:
    """Each request its own random stream, reproducible whatever order requests are served in."""
    return (params.seed * 1_000_003 + request_id) & 0xFFFFFFFF


def eos_mask_until(params: GenerationParams) -> int:
    """Output tokens during which EOS is masked: all of them with ignore_eos, else min_output_tokens."""
    return params.max_output_tokens if params.ignore_eos else params.min_output_tokens


def ftype_name(llama_cpp: Any, file_type: Any) -> str | None:
    """A GGUF ``general.file_type`` number as llama.cpp names it (3 → Q4_1), from the binding's constants."""
    try:
        number = int(file_type)
    except (TypeError, ValueError):
        return None
    for name, value in vars(llama_cpp).items():
        if name.startswith("LLAMA_FTYPE_") and value == number and name != "LLAMA_FTYPE_GUESSED":
            return name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    return None


def llama_cpp_version(llama_cpp: Any) -> str:
    """``llama-cpp-python 0.3.36 (llama.cpp <version>)``; the llama.cpp part when the library reports one."""
    try:
        binding = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        binding = getattr(llama_cpp, "__version__", "unknown")
    native = [f"{name} {value}" for name, value in (("llama.cpp", _c_string(llama_cpp, "llama_version")),
                                                     ("ggml", _c_string(llama_cpp, "ggml_version"))) if value]
    return f"llama-cpp-python {binding}" + (f" ({', '.join(native)})" if native else "")


def _c_string(llama_cpp: Any, symbol: str) -> str | None:
    """A ``const char *(void)`` the loaded libllama (or the ggml it links) exports, or None where it does not."""
    import ctypes

    try:
        function = getattr(llama_cpp.llama_cpp._lib, symbol)
        function.argtypes, function.restype = [], ctypes.c_char_p
        raw = function()
    except Exception:  # noqa: BLE001 - an older library without the symbol: the version says less
        return None
    return raw.decode("utf-8", "replace") if raw else None


# -- the adapter ----------------------------------------------------------------------------


class LlamaCppBackend(LoadedTokenizer):
    """``ContinuousBackend`` for llama-cpp-python: one request at a time, every token timed as it is sampled."""

    scheduling = "serial"  # lem's batches do not apply: this adapter serves requests itself, one by one

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._lib: Any = None  # the llama_cpp module
        self._llm: Any = None
        self._tokenizer: Any = None
        self._eos_ids: frozenset[int] = frozenset()
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
            n_vocab = _check_vocabulary(self._lib, llm, tokenizer, str(gguf), self.spec.model.name_or_path)
        except BaseException:
            llm.close()
            raise
        self._llm, self._tokenizer, self._kwargs = llm, tokenizer, kwargs
        self._gguf_path, self._hf_dir = str(gguf), config_dir
        self._n_ctx, self._n_vocab = int(llm.n_ctx()), n_vocab
        self._eos_ids = _eos_ids(tokenizer, hf_dir)

    def generate(self, batch: Sequence[PreparedRequest], params: GenerationParams) -> list[RawGeneration]:
        """Serve ``batch`` (warmup) one request after another; each RawGeneration starts when its request did."""
        return [self._generate_one(request, params) for request in batch]

    def serve(
        self, requests: Sequence[PreparedRequest], arrival_times: Sequence[float], params: GenerationParams
    ) -> Iterator[RawGeneration]:
        """First come, first served, one at a time: a request waits (queueing, in its TTFT) until the previous one ends."""
        order = sorted(range(len(requests)), key=lambda i: (arrival_times[i], i))
        for i in order:
            wait_s = arrival_times[i] - time.perf_counter()
            if wait_s > 0:
                time.sleep(wait_s)  # open loop: nothing has arrived yet
            raw = self._generate_one(requests[i], params)
            raw.arrival_time = arrival_times[i]
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
                ggml_commit=_c_string(lib, "ggml_commit"),
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
        chains = _SamplerChains(lib, params, sorted(self._eos_ids), self._n_vocab, needed, seed, masked_until)
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
                return tokenizer, _gguf_config_dir(local, gguf)
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


class _SamplerChains:
    """The C sampler chain(s) for one request; two when EOS is masked for only the first tokens.

    A chain's penalty history grows with every accepted token, so the token a chain did not
    sample is accepted into the other one: both see the same history.
    """

    def __init__(
        self, lib: Any, params: GenerationParams, eos_ids: Sequence[int], n_vocab: int, window: int, seed: int, masked_until: int
    ) -> None:
        self._lib = lib
        self._masked_until = masked_until
        kinds = [False] if masked_until == 0 else [True] if masked_until >= params.max_output_tokens else [True, False]
        self._chains: dict[bool, Any] = {}
        for mask in kinds:
            steps = sampler_steps(params, eos_ids=eos_ids, mask_eos=mask, penalty_window_tokens=window, seed=seed)
            self._chains[mask] = _build_chain(lib, steps, n_vocab)

    def accept_prompt(self, prompt: Sequence[int]) -> None:
        for chain in self._chains.values():
            for token in prompt:
                self._lib.llama_sampler_accept(chain, token)

    def sample(self, ctx: Any, step: int) -> int:
        mask = step < self._masked_until
        token = int(self._lib.llama_sampler_sample(self._chains[mask], ctx, -1))  # samples and accepts
        other = self._chains.get(not mask)
        if other is not None:
            self._lib.llama_sampler_accept(other, token)
        return token

    def free(self) -> None:
        for chain in self._chains.values():
            self._lib.llama_sampler_free(chain)  # frees the samplers the chain owns
        self._chains = {}


def _build_chain(lib: Any, steps: Sequence[SamplerStep], n_vocab: int) -> Any:
    import ctypes

    params = lib.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = lib.llama_sampler_chain_init(params)
    for step in steps:
        if step.kind == "logit_bias":
            biases = (lib.llama_logit_bias * len(step.args))(*[lib.llama_logit_bias(t, b) for t, b in step.args])
            sampler = lib.llama_sampler_init_logit_bias(n_vocab, len(step.args), ctypes.cast(biases, lib.llama_logit_bias_p))
        elif step.kind == "penalties":
            sampler = lib.llama_sampler_init_penalties(n_vocab, *step.args)
        else:
            sampler = getattr(lib, f"llama_sampler_init_{step.kind}")(*step.args)
        lib.llama_sampler_chain_add(chain, sampler)
    return chain


def _check_vocabulary(lib: Any, llm: Any, tokenizer: Any, gguf: str, model_name: str) -> int:
    """Refuse a GGUF whose token ids mean other tokens than the Hugging Face tokenizer's; return its vocabulary size."""
    vocab = lib.llama_model_get_vocab(llm.model)
    n_gguf = int(lib.llama_vocab_n_tokens(vocab))
    n_hf = len(tokenizer)
    gguf_tokens = [lib.llama_vocab_get_text(vocab, i).decode("utf-8", "replace") for i in range(n_gguf)]
    hf_tokens = tokenizer.convert_ids_to_tokens(list(range(min(n_gguf, n_hf))))
    differ = [i for i, (a, b) in enumerate(zip(hf_tokens, gguf_tokens)) if a != b]
    if n_hf > n_gguf or differ:
        first = f"; first at id {differ[0]}: {hf_tokens[differ[0]]!r} vs {gguf_tokens[differ[0]]!r}" if differ else ""
        raise LemError(
            f"backend.llama_cpp.model_path={gguf}: its vocabulary ({n_gguf} tokens) does not match the tokenizer of "
            f"model.name_or_path={model_name} ({n_hf} tokens, {len(differ)} ids differ{first}); lem feeds every engine "
            f"the same token ids, so the GGUF must be that model's"
        )
    return n_gguf


def _eos_ids(tokenizer: Any, hf_dir: str) -> frozenset[int]:
    """The ids that end a request: the generation config's EOS and the tokenizer's, as for the PyTorch adapter."""
    eos: set[int] = set()
    try:
        from transformers import GenerationConfig

        gen = GenerationConfig.from_pretrained(hf_dir).eos_token_id
        eos.update(gen if isinstance(gen, list) else [gen] if gen is not None else [])
    except (OSError, ValueError):
        pass  # no generation_config.json: the tokenizer's EOS alone
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    return frozenset(int(i) for i in eos)


def _gguf_config_dir(directory: Path, gguf: Path) -> str | None:
    """A config.json read from the GGUF, cached for the FLOPs count; None when transformers cannot read it."""
    from lem.files import cache_root

    target = cache_root() / "gguf-configs" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return str(target)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(directory), gguf_file=gguf.name)
        target.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(target))
    except (OSError, ValueError, ImportError, KeyError):
        return None  # FLOPs then say why they are missing
    return str(target)
