"""What the serving-engine adapters (vLLM, TensorRT-LLM) read from a Hugging Face checkpoint themselves.

They load the same Hugging Face tokenizer as the PyTorch adapter, so lem's engine-independent
layer templates, truncates and tokenises every prompt the same way for every engine, and hand
the engine token ids, never text. The EOS set is the PyTorch adapter's rule: the tokenizer's
EOS plus every ``eos_token_id`` of the generation config, so every engine stops on the same ids
and ``count_output_tokens`` trims on the same ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lem.config.schema import ModelConfig
from lem.errors import LemError, first_line


def load_tokenizer(model: ModelConfig, path: str) -> Any:
    """The model's Hugging Face tokenizer (transformers is imported here, during model_load)."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": model.trust_remote_code}
    revision = hub_revision(model, path)
    if revision:
        kwargs["revision"] = revision
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError) as e:
        raise LemError(f"model.name_or_path={model.name_or_path}: could not load its tokenizer: {first_line(e)}") from e


def hub_revision(model: ModelConfig, path: str) -> str | None:
    """The ``revision`` to pass with ``path``: the configured one, unless ``path`` is a local folder (no revisions there)."""
    return model.revision if model.revision and not Path(path).is_dir() else None


def eos_token_ids(model: ModelConfig, path: str, tokenizer: Any) -> frozenset[int]:
    """The tokenizer's EOS and the checkpoint's generation-config EOS ids (config.json's when it has none)."""
    eos: set[int] = set()
    found = _generation_eos(model, path)
    if found is not None:
        eos.update(found if isinstance(found, list) else [found])
    if getattr(tokenizer, "eos_token_id", None) is not None:
        eos.add(int(tokenizer.eos_token_id))
    return frozenset(int(i) for i in eos)


def _generation_eos(model: ModelConfig, path: str) -> Any:
    if Path(path).is_dir():
        for name in ("generation_config.json", "config.json"):
            found = _json_field(path, name, "eos_token_id")
            if found is not None:
                return found
        return None
    from transformers import (  # a hub id: the lookups from_pretrained makes
        AutoConfig,
        GenerationConfig,
    )

    kwargs: dict[str, Any] = {"revision": model.revision} if model.revision else {}
    try:
        return GenerationConfig.from_pretrained(path, **kwargs).eos_token_id
    except (OSError, ValueError):
        pass
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=model.trust_remote_code, **kwargs).eos_token_id
    except (OSError, ValueError):
        return None


def checkpoint_dtype(path: str) -> str | None:
    """The dtype the checkpoint's config.json declares ("dtype", formerly "torch_dtype"), if readable."""
    for key in ("dtype", "torch_dtype"):
        value = _json_field(path, "config.json", key)
        if isinstance(value, str):
            return value
    return None


def context_length(path: str, wanted: int) -> int:
    """``wanted`` tokens of context, capped at the checkpoint's max_position_embeddings when it declares one.

    Engines refuse a context longer than the model's; prompts that really need more are refused
    per request instead, with the numbers (see the adapters' serve).
    """
    limit = _json_field(path, "config.json", "max_position_embeddings")
    return min(wanted, limit) if isinstance(limit, int) and limit > 0 else wanted


def _json_field(path: str, filename: str, key: str) -> Any:
    """A top-level field of a JSON file in a local checkpoint directory; None for a hub id or a missing file."""
    file = Path(path) / filename
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text()).get(key)
    except (OSError, ValueError):
        return None


def load_hf_tokenizer(model: ModelConfig) -> tuple[str, Any, frozenset[int]]:
    """Find the model (converting the embedded one on first use) and load its Hugging Face tokenizer:
    ``(local path, tokenizer, EOS token ids)`` — what every engine counts tokens with."""
    from lem.models.resolve import resolve_model_path

    path = resolve_model_path(model)
    tokenizer = load_tokenizer(model, path)
    return path, tokenizer, eos_token_ids(model, path, tokenizer)
