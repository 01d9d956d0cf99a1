"""Bytes a model moves: its parameters, the weight bytes one forward reads, a token's KV cache.

The memory side of the physical floor (the FLOPs side is the ``ForwardCost``). From the loaded
model when lem has it (exact: each tensor's stored size, whatever its dtype or quantisation),
else from the config's ``TransformerShape`` and the run's dtype:

* ``n_params``: decoder projections + the embedding table (+ an untied lm head); norms and
  biases are not in the shape (well under 1 %).
* ``weight_bytes``: every weight a forward reads once. An untied input-embedding table is left
  out — a forward gathers only its tokens' rows — while the lm head (tied or not) is read whole.
  Quantised linears (``quantization`` int8 / fp8: 1 byte, int4 / nf4: ½) with the embedding and
  lm head kept at the compute dtype, as bitsandbytes, vLLM and TensorRT-LLM keep them.
* ``kv_cache_bytes_per_token``: K and V of one token over all layers at the compute dtype,
  ``2 × layers × kv_heads × head_dim × bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lem.measure.flops.analytical import (
    FlopsUnavailable,
    TransformerShape,
    transformer_shape,
)
from lem.measure.gpu_peaks import normalise_dtype

BYTES_PER_ELEMENT = {"float64": 8.0, "float32": 4.0, "tfloat32": 4.0, "bfloat16": 2.0, "float16": 2.0, "float8": 1.0}
# Bytes per quantised linear weight, by the engine's quantisation name (lower-cased).
QUANTIZED_BYTES_PER_PARAM = {"int8": 1.0, "fp8": 1.0, "int4": 0.5, "nf4": 0.5}
_NOT_QUANTIZED = (None, "", "none")
_PACKED = ("int4", "nf4")  # bitsandbytes 4-bit stores two weights per uint8 element: numel() halves


@dataclass(frozen=True)
class ModelBytes:
    n_params: int | None = None
    weight_bytes: float | None = None
    kv_cache_bytes_per_token: float | None = None
    notes: list[str] = field(default_factory=list)


def bytes_per_element(dtype: str | None) -> float | None:
    """Bytes of one value in ``dtype`` (float32, bf16, torch.float16, float8_e4m3fn, ...); None when unknown."""
    return BYTES_PER_ELEMENT.get(normalise_dtype(dtype)) if dtype else None


def model_bytes(model: Any = None, config: Any = None, dtype: str | None = None, *, quantization: str | None = None) -> ModelBytes:
    """Parameters, weight bytes per forward and KV bytes per token of ``model`` (loaded) or ``config``.

    ``dtype``: the compute dtype (weights, activations and KV cache when not quantised).
    ``quantization``: the engine's weight quantisation (int8, int4, fp8, awq, ...; None or "none": none).
    """
    if config is None and model is not None:
        config = getattr(model, "config", None)
    quant = None if quantization in _NOT_QUANTIZED else str(quantization).lower()
    notes: list[str] = []
    shape: TransformerShape | None = None
    if config is not None:
        try:
            shape = transformer_shape(config)
        except FlopsUnavailable as e:
            unknown = "kv_cache_bytes_per_token" if model is not None else "n_params, weight_bytes, kv_cache_bytes_per_token"
            notes.append(f"{unknown}: unknown ({str(e).removeprefix('analytical: ')})")
    element = bytes_per_element(dtype)
    kv = 2.0 * shape.num_layers * shape.num_kv_heads * shape.head_dim * element if shape is not None and element else None
    tied = _tied_embeddings(config) if config is not None else None

    if model is not None:
        params, weights = _loaded_counts(model)
        if quant in _PACKED:
            params = _shape_params(shape, tied) if shape is not None else None
            notes.append("n_params: from the config's shape (4-bit weights are packed)" if params is not None
                         else "n_params: unknown (4-bit weights are packed and the config has no known shape)")
        return ModelBytes(params, weights, kv, notes)
    if shape is None:
        return ModelBytes(None, None, None, notes)

    params = _shape_params(shape, tied)
    notes.append(
        "n_params: from the config's shape (decoder projections + embeddings"
        + (" + untied lm head" if tied is False else "") + "; norms and biases excluded)"
    )
    if tied is None:
        notes.append("model bytes: config does not say tie_word_embeddings; lm head counted as tied")
    table = shape.vocab_size * shape.hidden_size  # the lm head, read whole every forward
    if element is None:
        notes.append(f"weight_bytes: no bytes per parameter for dtype={dtype!r}")
        return ModelBytes(params, None, kv, notes)
    if quant is None and getattr(config, "quantization_config", None) is not None:
        notes.append("weight_bytes: the checkpoint is pre-quantised (quantization_config); bytes per weight not modelled")
        return ModelBytes(params, None, kv, notes)
    if quant is not None and quant not in QUANTIZED_BYTES_PER_PARAM:
        notes.append(f"weight_bytes: quantization={quantization}: bytes per weight not modelled")
        return ModelBytes(params, None, kv, notes)
    linear_bytes = QUANTIZED_BYTES_PER_PARAM[quant] if quant is not None else element
    return ModelBytes(params, float(shape.linear_macs_per_token * linear_bytes + table * element), kv, notes)


def _tied_embeddings(config: Any) -> bool | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for c in (text, config):
        tied = getattr(c, "tie_word_embeddings", None)
        if tied is not None:
            return bool(tied)
    return None


def _shape_params(shape: TransformerShape, tied: bool | None) -> int:
    table = shape.vocab_size * shape.hidden_size
    return shape.linear_macs_per_token + table * (1 if tied is not False else 2)


def _loaded_counts(model: Any) -> tuple[int, float]:
    """Parameters (shared tensors once) and bytes a forward reads: stored sizes, an untied input embedding left out."""
    params = list(model.parameters())  # parameters() yields a tied tensor once
    n_params = sum(p.numel() for p in params)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed_w, head_w = getattr(embed, "weight", None), getattr(head, "weight", None)
    gathered = embed_w if embed_w is not None and head_w is not None and embed_w is not head_w else None
    weight_bytes = sum(p.numel() * p.element_size() for p in params if p is not gathered)
    return n_params, float(weight_bytes)
