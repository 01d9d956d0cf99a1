"""backend=openai: any server that speaks the OpenAI-compatible completions API (``backend.openai.*``).

lem sends its own prompts at its own arrival times to ``/v1/completions`` with ``stream=true``, times
every streamed chunk when it reaches lem, and meters this machine's devices while the server works.
With ``launch=true`` lem starts the server itself (a preset's command, or ``server_command``), measures
its start-up as engine init + model load, and stops it afterwards.

Presets (``backend=<name>`` in Hydra's ``backend`` group; each sets ``backend.openai.preset`` and
``launch``): ``vllm_server``, ``llamacpp_server``, ``sglang_server`` and ``trtllm_server``. What each
server accepts and returns is in ``lem.backends.openai.presets``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lem.backends.base import Engine
from lem.backends.openai.presets import PRESETS, ServerKind
from lem.config.rules import at_least
from lem.config.types import Device, Quantization, ShardingStrategy
from lem.errors import ConfigError

if TYPE_CHECKING:
    from lem.config.schema import LemConfig


class PromptFormat(Enum):
    auto = "auto"  # the preset's: token ids where the server accepts them, else text
    token_ids = "token_ids"  # prompt: [ids...], exactly the ids every other engine gets
    text = "text"  # prompt: the templated text; its token count is checked against lem's tokenizer


class OutputTokens(Enum):
    auto = "auto"  # the preset's: the server's token ids where it streams them, else lem's tokenizer on the text
    token_ids = "token_ids"  # counted from the ids the server streams (vLLM: return_token_ids)
    text = "text"  # counted by tokenising the streamed text with lem's tokenizer (+ the EOS when the model stopped)


@dataclass
class OpenAIConfig:
    """An OpenAI-compatible server, already running (``base_url``) or started by lem (``launch``)."""

    preset: ServerKind = ServerKind.generic  # which server: the request fields and the command it is launched with
    base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1; None with launch=true: 127.0.0.1 on a free port
    model: str | None = None  # the served model name; None: the only model the server lists (launched: lem names it)
    api_key_env: str | None = None  # an environment variable holding the API key (sent as a Bearer token; never logged)
    launch: bool = False  # start the server as part of the run, stop it afterwards
    server_command: list[str] | None = None  # launch with this command instead of the preset's ({host} {port} {model} {model_path} {gguf} {python})
    server_env: dict[str, str] = field(default_factory=dict)  # extra environment of the launched server
    port: int | None = None  # the launched server's port; None: a free one
    startup_timeout_s: float = 600.0  # a launched server must answer GET /models within this
    request_timeout_s: float = 600.0  # the longest lem waits for a connection or for a request's next chunk (its queueing included)
    prompt_format: PromptFormat = PromptFormat.auto
    output_tokens: OutputTokens = OutputTokens.auto
    num_gpus: int = 1  # GPUs the server computes on (CUDA_VISIBLE_DEVICES order): the meter watches 0 .. num_gpus-1
    extra_body: dict[str, Any] = field(default_factory=dict)  # more request fields, passed as they are (the server's own)


# Request fields lem sets from its own options: extra_body may not set them a second time.
OWNED_FIELDS = {
    "model": "backend.openai.model",
    "prompt": "the workload (dataset.*)",
    "stream": "lem (responses are always streamed)",
    "stream_options": "lem (usage is always asked for)",
    "max_tokens": "dataset.max_output_tokens",
    "min_tokens": "dataset.min_output_tokens or dataset.ignore_eos",
    "ignore_eos": "dataset.ignore_eos",
    "temperature": "decoder.temperature and decoder.do_sample",
    "top_p": "decoder.top_p",
    "top_k": "decoder.top_k",
    "repetition_penalty": "decoder.repetition_penalty",
    "repeat_penalty": "decoder.repetition_penalty",
    "stop_token_ids": "the model's EOS ids",
    "n": "lem (one completion per request)",
    "return_token_ids": "backend.openai.output_tokens",
}
PLACEHOLDERS = ("host", "port", "model", "model_path", "gguf", "python")
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check(cfg: LemConfig) -> None:
    o = cfg.backend.openai
    preset = PRESETS[o.preset]
    if cfg.sharding.strategy is not ShardingStrategy.none:
        raise ConfigError("sharding.strategy", cfg.sharding.strategy.value, "none with backend=openai (the server parallelises itself; backend.openai.num_gpus says how many GPUs the meter watches)")
    if cfg.precision.quantization is not Quantization.none:
        raise ConfigError("precision.quantization", cfg.precision.quantization.value, "none with backend=openai (the server loads its own weights; quantise with its own options)")
    if cfg.energy.enabled and cfg.energy.codecarbon.enabled and cfg.energy.codecarbon.tracking_mode == "process":
        raise ConfigError("energy.codecarbon.tracking_mode", "process", "machine with backend=openai (the server is another process: lem's own share of the CPUs would leave it out)")
    at_least("backend.openai.startup_timeout_s", o.startup_timeout_s, 1.0)
    at_least("backend.openai.request_timeout_s", o.request_timeout_s, 1.0)
    at_least("backend.openai.num_gpus", o.num_gpus, 1)
    if o.port is not None and not 1 <= o.port <= 65535:
        raise ConfigError("backend.openai.port", o.port, "a TCP port in [1, 65535], or null for a free one")
    _check_url(cfg)
    if o.api_key_env is not None:
        if not _ENV_NAME.match(o.api_key_env):
            raise ConfigError("backend.openai.api_key_env", o.api_key_env, "the name of an environment variable (letters, digits, _)")
        if not os.environ.get(o.api_key_env):
            raise ConfigError("backend.openai.api_key_env", o.api_key_env, f"the name of an environment variable that is set (${o.api_key_env} is empty or unset)")
    for name, value in o.extra_body.items():
        if name in OWNED_FIELDS:
            raise ConfigError(f"backend.openai.extra_body.{name}", value, f"no value here: lem sets it from {OWNED_FIELDS[name]}")
    if o.prompt_format is PromptFormat.token_ids and not preset.token_id_prompts:
        raise ConfigError("backend.openai.prompt_format", "token_ids", f"text or auto with preset={o.preset.value} ({preset.label} takes text prompts only)")
    if o.output_tokens is OutputTokens.token_ids and not preset.streams_token_ids:
        raise ConfigError("backend.openai.output_tokens", "token_ids", f"text or auto with preset={o.preset.value} ({preset.label} does not stream output token ids)")
    preset.check_decoding(cfg)
    if o.launch:
        _check_launch(cfg)
    elif o.server_command is not None:
        raise ConfigError("backend.openai.server_command", o.server_command, "null unless backend.openai.launch=true (lem starts a server only when asked to)")
    if o.server_env and not o.launch:
        raise ConfigError("backend.openai.server_env", dict(o.server_env), "{} unless backend.openai.launch=true")
    if not o.launch:
        _check_server_answers(cfg)  # last: the only check that asks the network


def _check_server_answers(cfg: LemConfig) -> None:
    """A running server must answer GET /models and serve backend.openai.model, before anything starts."""
    from lem.backends.openai.client import auth_headers

    o = cfg.backend.openai
    choose_served_model(o.base_url, auth_headers(o.api_key_env), o.model)  # type: ignore[arg-type]


def choose_served_model(base_url: str, headers: dict[str, str], wanted: str | None) -> str:
    """The served model to ask for: ``wanted`` when the server lists it, else the only one it lists.
    ConfigError when the server cannot be reached, does not serve ``wanted``, or serves several and none was named."""
    from lem.backends.openai.client import ServerAnswered, served_models

    try:
        served = served_models(base_url, headers)
    except ServerAnswered as e:
        raise ConfigError("backend.openai.base_url", base_url, f"a reachable OpenAI-compatible server ({e})") from e
    url = base_url.rstrip("/") + "/models"
    if wanted is not None and wanted not in served:
        raise ConfigError("backend.openai.model", wanted, f"a model {url} serves: {', '.join(served) or 'none listed'}")
    if wanted is None and len(served) != 1:
        raise ConfigError("backend.openai.model", None, f"one of the models {url} serves: {', '.join(served) or 'none listed'}")
    return wanted if wanted is not None else served[0]


def _check_url(cfg: LemConfig) -> None:
    o = cfg.backend.openai
    if o.base_url is None:
        if not o.launch:
            raise ConfigError("backend.openai.base_url", None, "the server's URL, e.g. http://127.0.0.1:8000/v1 (or backend.openai.launch=true to start one)")
        return
    parts = urlsplit(o.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("backend.openai.base_url", o.base_url, "an http:// or https:// URL such as http://127.0.0.1:8000/v1")
    if o.launch:
        raise ConfigError("backend.openai.base_url", o.base_url, "null with backend.openai.launch=true (lem starts the server on 127.0.0.1 and backend.openai.port)")
    if cfg.energy.enabled and not is_local_host(parts.hostname):
        raise ConfigError(
            "backend.openai.base_url", o.base_url,
            "a server on this machine while energy.enabled=true (lem meters only this machine's devices); "
            "set energy.enabled=false to measure a remote server's latency and throughput alone",
        )


def _check_launch(cfg: LemConfig) -> None:
    o = cfg.backend.openai
    preset = PRESETS[o.preset]
    if o.server_command is None:
        if preset.command is None:
            raise ConfigError("backend.openai.server_command", None, "a command that starts the server (the generic preset has none); or pick preset=vllm, llamacpp, sglang or trtllm")
    else:
        if not o.server_command or not all(isinstance(part, str) and part for part in o.server_command):
            raise ConfigError("backend.openai.server_command", o.server_command, "a non-empty list of non-empty strings, e.g. [vllm, serve, '{model_path}', --port, '{port}']")
        for part in o.server_command:
            for name in re.findall(r"{([^{}]*)}", part):
                if name not in PLACEHOLDERS:
                    raise ConfigError("backend.openai.server_command", part, f"placeholders among {{{'}, {'.join(PLACEHOLDERS)}}} only")
        program = o.server_command[0]
        if "{" not in program and shutil.which(program) is None and not os.path.isfile(program):
            raise ConfigError("backend.openai.server_command", o.server_command[0], "a program on PATH or an existing file")
    for name, value in o.server_env.items():
        if not _ENV_NAME.match(str(name)):
            raise ConfigError(f"backend.openai.server_env.{name}", value, "an environment variable name as key")
    if o.server_command is None:
        preset.check_launch(cfg)  # the server's own package and settings (from backend.vllm.* / backend.llama_cpp.*)
    if cfg.backend.device is Device.cuda and o.preset is ServerKind.llamacpp and cfg.backend.llama_cpp.n_gpu_layers == 0:
        raise ConfigError("backend.device", "cuda", "cpu or auto while backend.llama_cpp.n_gpu_layers=0 (the server would compute on the CPU)")


def is_local_host(hostname: str) -> bool:
    """Whether ``hostname`` is this machine: loopback, an unspecified address, or one of its own names."""
    name = hostname.strip("[]").lower()
    if name in LOCAL_NAMES or name == socket.gethostname().lower():
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def cuda_indices(cfg: LemConfig) -> list[int]:
    """The GPUs the meter watches for a CUDA run: the server's ``num_gpus`` first visible ones."""
    return list(range(cfg.backend.openai.num_gpus))


def _presets() -> dict[str, dict[str, Any]]:
    """Hydra's ``backend=<name>`` options beside ``backend=openai``: a server launched by lem."""
    return {
        f"{kind}_server": {"name": "openai", "openai": {"preset": kind, "launch": True}}
        for kind in ("vllm", "llamacpp", "sglang", "trtllm")
    }


ENGINE = Engine(
    "openai", OpenAIConfig, "lem.backends.openai.engine:OpenAIBackend", check,
    presets=_presets(), cuda_indices=cuda_indices,
)
