"""Checks that read what the config points at, still before anything starts (a second or less).

The prompt file's contents, the model's name (resolvable offline?) and its ``config.json``
(parsable, with a ``model_type``; attention heads that the tensor-parallel degree divides) are
read here rather than discovered inside the engine worker after a model load. Settings that run
but may surprise (prompts cycled, batches capped by the number of prompts) come back as warnings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lem.config.schema import LemConfig
from lem.config.types import EMBEDDED_MODEL, DatasetSource, ShardingStrategy
from lem.errors import ConfigError

# Engines that read a Hugging Face checkpoint folder (llama.cpp may be given a folder holding only a .gguf).
_NEEDS_HF_CONFIG = ("pytorch", "vllm", "tensorrt")
# Engines that replicate KV heads when the tensor-parallel degree exceeds them (vLLM's and TensorRT-LLM's rule).
_REPLICATES_KV_HEADS = ("vllm", "tensorrt")


def check_inputs(cfg: LemConfig) -> list[str]:
    """Raise ConfigError for an unusable prompt file or model; return warnings for surprising settings."""
    warnings: list[str] = []
    n_texts = _check_prompt_file(cfg)
    n_prompts = cfg.dataset.n_prompts
    if n_texts is not None and n_texts < n_prompts:
        warnings.append(
            f"dataset.n_prompts={n_prompts}: {cfg.dataset.path} holds {n_texts} prompts; they are cycled "
            f"(each served up to {math.ceil(n_prompts / n_texts)} times)"
        )
    if cfg.batching.batch_size > n_prompts:
        warnings.append(
            f"batching.batch_size={cfg.batching.batch_size}: larger than dataset.n_prompts={n_prompts}, "
            f"so no batch holds more than {n_prompts} requests"
        )
    vllm = getattr(cfg.backend, "vllm", None)
    if cfg.backend.name.value == "vllm" and vllm is not None and vllm.speculative_config is not None and cfg.decoder.repetition_penalty != 1.0:
        warnings.append(
            f"decoder.repetition_penalty={cfg.decoder.repetition_penalty:g} with backend.vllm.speculative_config: vLLM then "
            "penalises the EOS id too (custom logits processors are refused with speculative decoding), unlike lem's other engines"
        )
    model_config = _check_model(cfg)
    if model_config is not None:
        _check_tensor_parallel(cfg, model_config)
    return warnings


def _check_prompt_file(cfg: LemConfig) -> int | None:
    """How many prompts the configured file holds (None for other sources)."""
    ds = cfg.dataset
    if ds.source is not DatasetSource.file:
        return None
    from lem.workload.prompts import file_texts

    return len(file_texts(ds.path, ds.column))


def _check_model(cfg: LemConfig) -> dict[str, Any] | None:
    """The model's config.json as a dict when it is on this machine; refuses a model that cannot load."""
    name = cfg.model.name_or_path
    if name == EMBEDDED_MODEL:
        return _embedded_config()
    from lem.models.resolve import resolve_model_path

    path = Path(resolve_model_path(cfg.model))  # an unknown id offline, or a missing folder: one line here
    if not path.is_dir():
        return None  # a hub id while the hub is reachable: the engine downloads it
    data = read_model_config(path, name, needs_config=cfg.backend.name.value in _NEEDS_HF_CONFIG)
    if data is not None and data.get("auto_map") and not cfg.model.trust_remote_code:
        _refuse_remote_code(name, str(data.get("model_type")))
    return data


def _refuse_remote_code(name: str, model_type: str) -> None:
    """A checkpoint whose architecture only its own Python code defines: lem never runs it unasked."""
    from transformers.models.auto.configuration_auto import (
        CONFIG_MAPPING_NAMES,  # only for such checkpoints
    )

    if model_type not in CONFIG_MAPPING_NAMES:
        raise ConfigError(
            "model.name_or_path", name,
            f"a model whose architecture transformers ships: '{model_type}' is defined by Python code in the "
            "checkpoint (config.json auto_map), which lem runs only with model.trust_remote_code=true, for a model you trust",
        )


def read_model_config(folder: Path, name: str, *, needs_config: bool) -> dict[str, Any] | None:
    config_file = folder / "config.json"
    key = "model.name_or_path"
    if not config_file.is_file():
        if needs_config:
            raise ConfigError(key, name, "a model folder holding a config.json (Hugging Face layout), a Hugging Face model id or " + EMBEDDED_MODEL)
        return None
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(key, name, f"a model folder whose config.json is readable JSON ({config_file}: {_reason(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(key, name, f"a model folder whose config.json is a JSON object ({config_file} holds a {type(data).__name__})")
    if needs_config and not data.get("model_type"):
        raise ConfigError(key, name, f"a model folder whose config.json names its architecture ('model_type' missing in {config_file})")
    return data


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0]


def _embedded_config() -> dict[str, Any] | None:
    """The converted embedded model's config.json, when it has been converted already (cheap)."""
    try:
        from lem.models.embedded import embedded_model_dir

        data = json.loads((embedded_model_dir() / "config.json").read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - not converted yet (or not installed): the worker converts or refuses it
        return None
    return data if isinstance(data, dict) else None


def tensor_parallel_degree(cfg: LemConfig) -> tuple[int, str]:
    """How many ways the engine splits each layer's attention heads, and the key that says so."""
    engine = cfg.backend.name.value
    explicit = getattr(getattr(cfg.backend, engine), "tensor_parallel_size", None)
    if explicit is not None:
        return int(explicit), f"backend.{engine}.tensor_parallel_size"
    s = cfg.sharding
    return (s.num_shards if s.strategy is ShardingStrategy.tensor_parallel else 1), "sharding.num_shards"


def _check_tensor_parallel(cfg: LemConfig, model_config: dict[str, Any]) -> None:
    degree, key = tensor_parallel_degree(cfg)
    if degree <= 1:
        return
    text = model_config.get("text_config") if isinstance(model_config.get("text_config"), dict) else model_config
    heads = text.get("num_attention_heads") or text.get("n_head") or text.get("num_heads")
    if not isinstance(heads, int) or heads < 1:
        return  # no head count to check against: the engine decides
    kv_heads = text.get("num_key_value_heads") or heads
    replicates = cfg.backend.name.value in _REPLICATES_KV_HEADS
    allowed = [d for d in range(1, heads + 1) if _splits(d, heads, kv_heads, replicates)]
    if degree not in allowed:
        raise ConfigError(
            key, degree,
            f"a tensor-parallel degree that divides {cfg.model.name_or_path}'s {heads} attention heads and {kv_heads} KV heads: "
            + ", ".join(str(d) for d in allowed),
        )


def _splits(degree: int, heads: int, kv_heads: int, replicates_kv: bool) -> bool:
    if heads % degree:
        return False
    if kv_heads % degree == 0:
        return True
    return replicates_kv and degree % kv_heads == 0
