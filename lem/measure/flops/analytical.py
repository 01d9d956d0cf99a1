"""The per-forward cost of a model: analytical (from its Hugging Face config) or 2 × parameters.

Every strategy reduces a model to a ``ForwardCost`` (per token fed, per (query, key) pair
attended, per logit row); ``lem.measure.flops.run`` composes forwards into a generation and a
run. The counting conventions are in the ``lem.measure.flops`` package docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SOURCE_CALFLOPS = "calflops"
SOURCE_ANALYTICAL = "analytical"
SOURCE_PARAMS = "2x_params"

# Decoder-only model types by MLP shape. Gated: gate/up/down (SwiGLU, GeGLU) = 3 matmuls.
GATED_MLP_TYPES = frozenset(
    {
        "llama", "mistral", "ministral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text",
        "phi3", "olmo", "olmo2", "granite", "cohere", "cohere2", "stablelm", "smollm3", "helium",
        "glm", "glm4", "internlm2", "exaone",
    }
)
# Plain: up/down (GELU, ReLU²) = 2 matmuls.
PLAIN_MLP_TYPES = frozenset(
    {"gpt2", "gpt_bigcode", "gpt_neox", "gptj", "codegen", "phi", "starcoder2", "opt", "falcon", "bloom", "nemotron"}
)
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


class FlopsUnavailable(Exception):
    """A strategy cannot count this model; the message says why (recorded in ``FlopsRecord.notes``)."""


# --- the per-forward cost model ----------------------------------------------------------


@dataclass(frozen=True)
class ForwardCost:
    """FLOPs of one forward pass of one sequence (batch row)::

        flops = per_token · q + per_query_key · pairs + per_logit · logit_rows

    ``q`` tokens fed, ``pairs`` (query, key) pairs attended, ``logit_rows`` positions whose
    logits are computed. Every strategy reduces a model to these three numbers.
    """

    per_token_flops: float  # every linear layer except the lm head, for one token
    per_query_key_flops: float  # QKᵀ and AV, all layers, for one (query, key) pair
    per_logit_flops: float  # the lm head for one position
    source: str = SOURCE_ANALYTICAL

    def forward_flops(self, query_tokens: int, key_tokens: int | None = None, *, logit_rows: int = 1,
                      causal_attention: bool = False) -> float:
        """One row's forward: ``query_tokens`` new tokens attending over ``key_tokens`` keys (cache + new)."""
        keys = query_tokens if key_tokens is None else key_tokens
        return (
            self.per_token_flops * query_tokens
            + self.per_query_key_flops * attention_pairs(query_tokens, keys, causal=causal_attention)
            + self.per_logit_flops * logit_rows
        )


def attention_pairs(query_tokens: int, key_tokens: int, *, causal: bool = False) -> int:
    """(query, key) pairs the attention matmuls cover; the queries are the last ``query_tokens`` keys."""
    if not causal:
        return query_tokens * key_tokens
    return query_tokens * key_tokens - query_tokens * (query_tokens - 1) // 2  # key j ≤ query i only


@dataclass(frozen=True)
class TransformerShape:
    """What the analytical count needs from a decoder-only transformer's config."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    gated_mlp: bool
    sliding_window: int | None = None

    @property
    def linear_macs_per_token(self) -> int:
        """Multiply-accumulates of all decoder-layer projections for one token (lm head excluded)."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attn = self.hidden_size * q + 2 * self.hidden_size * kv + q * self.hidden_size  # q, k, v, o
        mlp = (3 if self.gated_mlp else 2) * self.hidden_size * self.intermediate_size
        return self.num_layers * (attn + mlp)

    def cost(self) -> ForwardCost:
        return ForwardCost(
            per_token_flops=2.0 * self.linear_macs_per_token,
            per_query_key_flops=2.0 * self.num_layers * 2 * self.num_heads * self.head_dim,  # QKᵀ + AV
            per_logit_flops=2.0 * self.hidden_size * self.vocab_size,
            source=SOURCE_ANALYTICAL,
        )


def _get(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def transformer_shape(config: Any) -> TransformerShape:
    """Read a Hugging Face config (a multimodal one's text config); FlopsUnavailable when unsupported."""
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    model_type = str(getattr(config, "model_type", None))
    for key in _MOE_KEYS:
        experts = getattr(config, key, None)
        if isinstance(experts, int) and experts > 1:
            raise FlopsUnavailable(
                f"analytical: model_type={model_type} is a mixture of experts ({key}={experts}); active experts per token are not modelled"
            )
    if model_type in GATED_MLP_TYPES:
        gated = True
    elif model_type in PLAIN_MLP_TYPES:
        gated = False
    else:
        raise FlopsUnavailable(
            f"analytical: model_type={model_type} is not in the table of decoder-only architectures "
            f"(gated MLP: {', '.join(sorted(GATED_MLP_TYPES))}; plain MLP: {', '.join(sorted(PLAIN_MLP_TYPES))})"
        )
    layers = _get(config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _get(config, "hidden_size", "n_embd", "d_model")
    heads = _get(config, "num_attention_heads", "n_head")
    vocab = _get(config, "vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (layers, hidden, heads, vocab)):
        raise FlopsUnavailable(f"analytical: model_type={model_type}: config lacks layers/hidden size/heads/vocab size")
    if model_type == "gpt_bigcode":
        kv_heads = 1 if getattr(config, "multi_query", False) else heads
    elif model_type == "falcon":
        if getattr(config, "new_decoder_architecture", False):
            kv_heads = _get(config, "num_kv_heads") or heads
        else:
            kv_heads = 1 if getattr(config, "multi_query", False) else heads
    else:
        kv_heads = _get(config, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _get(config, "head_dim") or hidden // heads
    inter = _get(config, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size") or 4 * hidden
    if model_type == "opt" and _get(config, "word_embed_proj_dim") not in (None, hidden):
        raise FlopsUnavailable("analytical: OPT with word_embed_proj_dim != hidden_size (extra projections) is not modelled")
    window = getattr(config, "sliding_window", None)
    return TransformerShape(
        model_type=model_type,
        num_layers=int(layers),
        hidden_size=int(hidden),
        num_heads=int(heads),
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        intermediate_size=int(inter),
        vocab_size=int(vocab),
        gated_mlp=gated,
        sliding_window=int(window) if isinstance(window, int) and window > 0 else None,
    )


def analytical_cost(config: Any) -> ForwardCost:
    return transformer_shape(config).cost()


def prefill_forward_flops(config_or_cost: Any, input_tokens: int, *, logit_rows: int | None = 1,
                          causal_attention: bool = False) -> float:
    """One prefill forward of one sequence; ``logit_rows=None`` computes logits for every position (a plain ``model(...)`` call)."""
    cost = as_cost(config_or_cost)
    rows = input_tokens if logit_rows is None else logit_rows
    return cost.forward_flops(input_tokens, input_tokens, logit_rows=rows, causal_attention=causal_attention)


def params_cost(model: Any) -> ForwardCost:
    """2 × parameters: every parameter except embedding tables per token fed, the lm head per logit row.

    Attention's QKᵀ/AV matmuls are not counted. Norm weights and biases are included (negligible).
    Quantised (bitsandbytes) weights are packed, so their count is wrong: use analytical there.
    """
    import torch

    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    body = sum(p.numel() for p in model.parameters() if id(p) not in embedding and p is not head_weight)
    return ForwardCost(
        per_token_flops=2.0 * body,
        per_query_key_flops=0.0,
        per_logit_flops=2.0 * (head_weight.numel() if head_weight is not None else 0),
        source=SOURCE_PARAMS,
    )


def meta_model(config: Any, trust_remote_code: bool) -> Any:
    """The model of ``config`` on the meta device (for ``params_cost`` when no model is loaded)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def as_cost(config_or_cost: Any) -> ForwardCost:
    """A ``ForwardCost`` as given, or the analytical cost of a config."""
    return config_or_cost if isinstance(config_or_cost, ForwardCost) else analytical_cost(config_or_cost)
