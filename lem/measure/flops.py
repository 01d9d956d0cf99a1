"""FLOPs of a generation phase: calflops, an analytical count, or 2 × parameters × tokens.

Usable without Hydra. What the pipeline calls at the end of a run::

    record = count_run_flops("auto", requests, model=backend.model, model_path=path, kv_cache=True,
                             device_name="NVIDIA H100 80GB HBM3", dtype="bfloat16")
    summary = flops_summary(record, output_tokens=..., generation_wall_s=..., device_type="cuda")

Conventions (every strategy):

* **2 FLOPs per multiply-accumulate; matmuls only** — q/k/v/o projections, the MLP, the lm
  head, and attention's two matmuls (scores QKᵀ and the weighted sum AV). Norms,
  activations, softmax, RoPE, residual adds and biases are not counted (under 1 % of a real
  model; calflops counts some of them, which is most of its difference from the analytical
  count). The input-embedding lookup is free; the lm-head matmul is counted even when its
  weight is tied to the embedding.
* **GQA**: k/v projections are ``hidden × num_key_value_heads × head_dim``; the attention
  matmuls run over all ``num_attention_heads`` (K/V are repeated per group).
* **Attention over a prefill of n tokens counts the full n × n scores** — what eager
  attention and SDPA's math/efficient kernels compute under a causal mask, and what calflops
  counts. ``causal_attention=True`` counts n(n+1)/2 pairs instead (flash kernels skip masked
  blocks).
* **Logits for the last position only** in every forward, as Transformers' ``generate``
  (``logits_to_keep=1``) and vLLM do.
* **A request producing T tokens runs 1 prefill + (T − 1) decode forwards**; decode step
  k = 1 … T−1 feeds one token that attends over n + k keys (KV cache). Without a KV cache
  (``kv_cache=False``) step k re-runs the whole n + k sequence.

Two totals (see ``run_flops``):

* **executed** (``total_flops``, the headline): what the engine computed. A padded batch
  (``padded_input_tokens`` set) runs every row at the padded width W and keeps decoding
  every row until its longest row has finished; requests without padding are counted alone.
* **useful** (``useful_flops``): each request alone, unpadded, KV cache on — the work its
  tokens needed. MFU uses useful FLOPs (PaLM's definition); HFU uses executed.

Strategies (``FlopsStrategy``): ``calflops`` counts prefill forwards and one decode step of
the model (built on the meta device, eager attention, in a subprocess) and fits the
per-forward cost ``c + a·q + b·(query, key) pairs`` from them, which the executed/useful
composition then uses; ``analytical`` derives the same three coefficients from the HF
config; ``params`` uses 2 × (non-embedding parameters) per token fed and 2 × lm-head
parameters per logit row, attention matmuls ignored. ``auto`` tries them in that order; the
strategy used is ``source`` and every fallback's reason is in ``notes``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lem.records import FlopsRecord

SOURCE_CALFLOPS = "calflops"
SOURCE_ANALYTICAL = "analytical"
SOURCE_PARAMS = "2x_params"

CALFLOPS_FIT_LENGTHS = (8, 16, 32)  # prefill lengths the quadratic per-forward cost is solved from
STRUCTURE_TOLERANCE = 1e-3  # calflops counts must follow c + a·q + b·pairs this closely at the check points
WORKER = Path(__file__).with_name("flops_calflops_worker.py")

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
    cost = _as_cost(config_or_cost)
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


def _meta_model(config: Any, trust_remote_code: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _as_cost(config_or_cost: Any) -> ForwardCost:
    return config_or_cost if isinstance(config_or_cost, ForwardCost) else analytical_cost(config_or_cost)


# --- composing forwards into a generation ------------------------------------------------


@dataclass(frozen=True)
class FlopsBreakdown:
    prefill_flops: float
    decode_flops: float

    @property
    def total_flops(self) -> float:
        return self.prefill_flops + self.decode_flops

    def __add__(self, other: FlopsBreakdown) -> FlopsBreakdown:
        return FlopsBreakdown(self.prefill_flops + other.prefill_flops, self.decode_flops + other.decode_flops)


ZERO = FlopsBreakdown(0.0, 0.0)


def generation_flops(
    config_or_cost: Any,
    input_tokens: int,
    output_tokens: int,
    padded_input_tokens: int | None = None,
    *,
    batch_size: int = 1,
    kv_cache: bool = True,
    causal_attention: bool = False,
) -> FlopsBreakdown:
    """FLOPs of ``generate`` for ``batch_size`` rows of width ``padded_input_tokens`` (or ``input_tokens``)
    decoding ``output_tokens`` tokens each: one prefill forward and ``output_tokens − 1`` decode forwards."""
    cost = _as_cost(config_or_cost)
    width = padded_input_tokens if padded_input_tokens is not None else input_tokens
    if width < input_tokens:
        raise ValueError(f"padded_input_tokens={padded_input_tokens} < input_tokens={input_tokens}")
    prefill = cost.forward_flops(width, width, causal_attention=causal_attention)
    steps = max(output_tokens - 1, 0)
    if kv_cache:
        # Step k attends over width + k keys: Σ_{k=1}^{steps} (width + k) pairs.
        pairs = steps * width + steps * (steps + 1) // 2
        decode = steps * (cost.per_token_flops + cost.per_logit_flops) + cost.per_query_key_flops * pairs
    else:
        decode = sum(cost.forward_flops(width + k, width + k, causal_attention=causal_attention) for k in range(1, steps + 1))
    return FlopsBreakdown(batch_size * prefill, batch_size * float(decode))


@dataclass(frozen=True)
class RequestTokens:
    """One request as the FLOPs count sees it (the fields of a ``RequestRecord``)."""

    input_tokens: int
    output_tokens: int
    padded_input_tokens: int | None = None  # set: a row of a padded batch that ran at this width
    batch_id: int | None = None  # rows of one padded batch share it


def _as_request(r: Any) -> RequestTokens:
    if isinstance(r, RequestTokens):
        return r
    if isinstance(r, Mapping):
        return RequestTokens(int(r["input_tokens"]), int(r["output_tokens"]), r.get("padded_input_tokens"), r.get("batch_id"))
    if isinstance(r, Sequence):
        return RequestTokens(*r)
    return RequestTokens(r.input_tokens, r.output_tokens, getattr(r, "padded_input_tokens", None), getattr(r, "batch_id", None))


@dataclass(frozen=True)
class RunFlops:
    executed: FlopsBreakdown  # what the engine computed: padding and finished rows of a padded batch included
    useful: FlopsBreakdown  # each request alone, unpadded, with a KV cache


def run_flops(cost: ForwardCost, requests: Iterable[Any], *, kv_cache: bool = True, causal_attention: bool = False) -> RunFlops:
    """Executed and useful FLOPs of a run's requests (``RequestTokens``, ``RequestRecord``s, dicts or tuples).

    Rows with ``padded_input_tokens`` are grouped by ``batch_id``: a padded batch of B rows runs
    at its widest padded width and decodes ``max(output_tokens)`` steps for every row (static
    batching keeps finished rows in the batch). Requests without padding are counted alone.
    """
    reqs = [_as_request(r) for r in requests]
    executed, useful = ZERO, ZERO
    batches: dict[Any, list[RequestTokens]] = {}
    for i, r in enumerate(reqs):
        useful += generation_flops(cost, r.input_tokens, r.output_tokens, kv_cache=True, causal_attention=causal_attention)
        if r.padded_input_tokens is None:
            executed += generation_flops(cost, r.input_tokens, r.output_tokens, kv_cache=kv_cache, causal_attention=causal_attention)
        else:
            batches.setdefault(r.batch_id if r.batch_id is not None else ("alone", i), []).append(r)
    for rows in batches.values():
        width = max(max(int(r.padded_input_tokens or 0), r.input_tokens) for r in rows)
        steps = max(r.output_tokens for r in rows)
        executed += generation_flops(cost, width, steps, batch_size=len(rows), kv_cache=kv_cache, causal_attention=causal_attention)
    return RunFlops(executed=executed, useful=useful)


# --- calflops, isolated in a subprocess --------------------------------------------------


@dataclass(frozen=True)
class CalflopsFit:
    cost: ForwardCost  # solved from prefill counts at CALFLOPS_FIT_LENGTHS
    prefill_flops: dict[int, int]  # calflops' count of a prefill forward (batch 1, last-position logits)
    prefill_macs: dict[int, int]  # its multiply-accumulates (matmuls only): 2 × these is the analytical convention
    decode: dict[str, int] | None  # {"kv_tokens", "flops"}: one decode step counted by calflops
    structure_error: float  # worst relative miss of the fitted cost at the check points (prefill and decode)
    check_length: int
    version: str | None = None


def calflops_available() -> bool:
    return importlib.util.find_spec("calflops") is not None


def calflops_fit(
    config: Any = None,
    *,
    model_path: str | None = None,
    trust_remote_code: bool = False,
    check_length: int = 128,
    timeout_s: float = 300.0,
    inject_failure: bool = False,
) -> CalflopsFit:
    """Count forwards with calflops in a subprocess and solve the per-forward cost from them.

    Counts prefill forwards at ``CALFLOPS_FIT_LENGTHS`` and ``check_length`` and one decode step
    over ``check_length + 1`` keys; the three fit lengths give c, a, b exactly, the other two
    check that calflops' counts follow that structure. Raises FlopsUnavailable with the reason.
    """
    if not calflops_available():
        raise FlopsUnavailable("calflops: not installed (pip install calflops)")
    if config is None and model_path is None:
        raise FlopsUnavailable("calflops: neither a config nor a model path to build the model from")
    lengths = sorted({*CALFLOPS_FIT_LENGTHS, check_length})
    with tempfile.TemporaryDirectory(prefix="lem-calflops-") as tmp:
        request: dict[str, Any] = {
            "trust_remote_code": trust_remote_code,
            "lengths": lengths,
            "decode_kv_tokens": check_length + 1,
            "inject_failure": inject_failure,
        }
        # The config the run actually loaded; a remote-code config needs its own directory for its code.
        if config is not None and not (getattr(config, "auto_map", None) and model_path):
            config.save_pretrained(tmp)
            request["config_dir"] = tmp
        else:
            request["model_path"] = model_path
        cache_file = _calflops_cache_file(config, request) if "config_dir" in request and not inject_failure else None
        cached = _read_json(cache_file) if cache_file is not None else None
        if cached is not None:
            return _fit_from_result(cached, check_length)
        req_path, out_path = Path(tmp, "request.json"), Path(tmp, "result.json")
        req_path.write_text(json.dumps(request))
        env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
        env["CUDA_VISIBLE_DEVICES"] = ""  # meta device only: never open a CUDA context beside the measured one
        try:
            proc = subprocess.run(
                [sys.executable, str(WORKER), str(req_path), str(out_path)],
                capture_output=True, text=True, timeout=timeout_s, env=env,
            )
        except subprocess.TimeoutExpired:
            raise FlopsUnavailable(f"calflops: worker did not finish within {timeout_s:.0f} s") from None
        if not out_path.exists():
            tail = (proc.stderr or "").strip().splitlines()
            raise FlopsUnavailable(f"calflops: worker exited with {proc.returncode}: {tail[-1] if tail else 'no output'}")
        result = json.loads(out_path.read_text())
    if not result.get("ok"):
        raise FlopsUnavailable(f"calflops: {result.get('error')}" + (" (its patches stayed inside the worker)" if result.get("torch_left_patched") else ""))
    if cache_file is not None:
        _write_json_atomic(cache_file, result)
    return _fit_from_result(result, check_length)


def _calflops_cache_file(config: Any, request: Mapping[str, Any]) -> Path | None:
    """calflops' counts depend only on the architecture and the lengths: cache them (a worker costs seconds)."""
    try:
        import calflops  # noqa: F401 - its version is part of the key
        from importlib.metadata import version

        from lem.files import cache_root

        arch = config.to_json_string(use_diff=False)
        key = json.dumps([arch, request["lengths"], request["decode_kv_tokens"], version("calflops"), version("transformers")])
    except Exception:  # noqa: BLE001 - no cache, count afresh
        return None
    return cache_root() / "flops" / f"calflops-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("ok") else None


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    from lem.files import write_json_atomic

    try:
        write_json_atomic(path, data)
    except OSError:
        pass  # a read-only cache only costs the next run a recount


def _fit_from_result(result: Mapping[str, Any], check_length: int) -> CalflopsFit:
    prefill = {int(n): int(f) for n, f in result["prefill"].items()}
    cost = _solve_quadratic(prefill, CALFLOPS_FIT_LENGTHS)
    errors = [_rel(cost.forward_flops(check_length), prefill[check_length])]
    decode = result.get("decode")
    if decode:
        errors.append(_rel(cost.forward_flops(1, int(decode["kv_tokens"])), int(decode["flops"])))
    macs = {int(n): int(m) for n, m in result["prefill_macs"].items()}
    return CalflopsFit(cost, prefill, macs, decode, max(errors), check_length, result.get("calflops_version"))


def _solve_quadratic(counts: Mapping[int, int], lengths: Sequence[int]) -> ForwardCost:
    """F(n) = c + a·n + b·n² through three points (exact rational arithmetic)."""
    (n1, n2, n3) = lengths
    f1, f2, f3 = (Fraction(counts[n]) for n in lengths)
    d21 = (f2 - f1) / (n2 - n1)
    d32 = (f3 - f2) / (n3 - n2)
    b = (d32 - d21) / (n3 - n1)
    a = d21 - b * (n1 + n2)
    c = f1 - a * n1 - b * n1 * n1
    return ForwardCost(float(a), float(b), float(c), source=SOURCE_CALFLOPS)


def _rel(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured if measured else float(predicted != 0)


# --- what the pipeline calls ------------------------------------------------------------


def count_run_flops(
    strategy: Any,
    requests: Iterable[Any],
    *,
    model: Any = None,
    config: Any = None,
    model_path: str | None = None,
    trust_remote_code: bool = False,
    kv_cache: bool = True,
    causal_attention: bool = False,
    device_name: str | None = None,
    dtype: str | None = None,
    tf32: bool = False,
    calflops_timeout_s: float = 300.0,
) -> FlopsRecord:
    """FLOPs of a run's generation phase as a ``FlopsRecord`` (strategy used in ``source``, reasons in ``notes``).

    ``strategy``: a ``FlopsStrategy`` or its value (auto | calflops | analytical | params | off).
    ``requests``: the run's ``RequestRecord``s (or anything with input_tokens, output_tokens,
    padded_input_tokens, batch_id). ``model``: the loaded HF model (for its config and the
    params count); or ``config`` / ``model_path`` when no model is in this process.
    ``device_name``/``dtype``: the GPU (``torch.cuda.get_device_name()``) and compute dtype,
    for the peak FLOP/s stored beside the count (None on CPU).
    """
    from lem.measure.gpu_peaks import peak_flops_per_s

    name = str(getattr(strategy, "value", strategy))
    if name not in ("auto", "calflops", "analytical", "params", "off"):
        raise ValueError(f"flops.strategy={name}: expected one of auto, calflops, analytical, params, off")
    reqs = [_as_request(r) for r in requests]
    peak = peak_flops_per_s(device_name, dtype, tf32=tf32) if device_name and dtype else None
    if name == "off":
        return FlopsRecord(strategy=name, peak_flops_per_s=peak, notes=["flops.strategy=off: not counted"])
    if config is None and model is not None:
        config = getattr(model, "config", None)

    notes: list[str] = []
    analytical: ForwardCost | None = None
    shape: TransformerShape | None = None
    if config is not None and name in ("auto", "calflops", "analytical"):
        try:
            shape = transformer_shape(config)
            analytical = shape.cost()
        except FlopsUnavailable as e:
            notes.append(str(e))

    longest = max((max(r.padded_input_tokens or 0, r.input_tokens) for r in reqs), default=0)
    chosen: ForwardCost | None = None
    cross_check: float | None = None
    if name in ("auto", "calflops"):
        try:
            fit = calflops_fit(
                config, model_path=model_path, trust_remote_code=trust_remote_code,
                check_length=max(longest, 2 * CALFLOPS_FIT_LENGTHS[-1]), timeout_s=calflops_timeout_s,
            )
            if analytical is not None:
                cross_check = fit.prefill_flops[fit.check_length] / analytical.forward_flops(fit.check_length)
            if fit.structure_error > STRUCTURE_TOLERANCE and name == "auto":
                notes.append(
                    f"calflops: its counts do not follow one prefill + per-step decode structure "
                    f"(off by {fit.structure_error:.2%} at {fit.check_length} tokens); not used"
                )
            else:
                if fit.structure_error > STRUCTURE_TOLERANCE:
                    notes.append(f"calflops: structure check off by {fit.structure_error:.2%}; used because flops.strategy=calflops")
                chosen = fit.cost
                if cross_check is not None:
                    notes.append(f"calflops/analytical for one {fit.check_length}-token prefill forward: {cross_check:.4f}")
        except FlopsUnavailable as e:
            notes.append(str(e))
    if chosen is None and analytical is not None:
        chosen = analytical
    if chosen is None and name != "params" and config is None:
        notes.append("analytical: no model config given")
    if chosen is None:
        try:
            chosen = params_cost(model if model is not None else _meta_model(config, trust_remote_code))
        except Exception as e:  # noqa: BLE001 - any failure here means: no count, say why
            notes.append(f"2x_params: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    if chosen is None:
        return FlopsRecord(strategy=name, peak_flops_per_s=peak, notes=notes)

    if chosen.source == SOURCE_PARAMS:
        notes.append("2x_params: attention score/value matmuls not counted; embedding tables excluded")
    if shape is not None and shape.sliding_window is not None and longest + max((r.output_tokens for r in reqs), default=0) > shape.sliding_window:
        notes.append(f"sliding_window={shape.sliding_window}: counted as full attention (engines with a windowed cache attend over fewer keys)")
    result = run_flops(chosen, reqs, kv_cache=kv_cache, causal_attention=causal_attention)
    return FlopsRecord(
        total_flops=result.executed.total_flops,
        source=chosen.source,
        useful_flops=result.useful.total_flops,
        prefill_flops=result.executed.prefill_flops,
        decode_flops=result.executed.decode_flops,
        strategy=name,
        calflops_vs_analytical=cross_check,
        peak_flops_per_s=peak,
        notes=notes,
    )


def flops_summary(
    record: FlopsRecord | Mapping[str, Any],
    output_tokens: int,
    generation_wall_s: float | None,
    *,
    device_name: str | None = None,
    dtype: str | None = None,
    device_type: str | None = None,
    tf32: bool = False,
) -> dict[str, Any]:
    """Derived compute metrics: FLOPs per output token, achieved FLOP/s, MFU and HFU.

    ``flops_per_s`` = executed FLOPs / generation wall time. ``mfu`` = useful FLOPs / wall /
    peak (PaLM's model FLOPs utilisation: padding and recomputation excluded); ``hfu`` uses
    executed FLOPs. Both are null on CPU and on GPUs missing from the peak table.
    """
    from lem.measure.gpu_peaks import peak_flops_per_s

    rec = record if isinstance(record, Mapping) else record.__dict__
    total, useful = rec.get("total_flops"), rec.get("useful_flops")
    on_cpu = device_type == "cpu"
    peak = None if on_cpu else rec.get("peak_flops_per_s")
    if peak is None and not on_cpu and device_name and dtype:
        peak = peak_flops_per_s(device_name, dtype, tf32=tf32)
    wall = generation_wall_s if generation_wall_s and generation_wall_s > 0 else None

    def per_s(x: Any) -> float | None:
        return float(x) / wall if x is not None and wall else None

    def util(x: Any) -> float | None:
        rate = per_s(x)
        return rate / peak if rate is not None and peak else None

    if on_cpu:
        mfu_note = "MFU is null on CPU: no peak FLOP/s table for CPUs"
    elif peak is None:
        mfu_note = f"MFU is null: no peak FLOP/s for device={device_name!r} dtype={dtype!r}"
    else:
        mfu_note = None
    return {
        "total_flops": total,
        "useful_flops": useful,
        "prefill_flops": rec.get("prefill_flops"),
        "decode_flops": rec.get("decode_flops"),
        "flops_per_output_token": float(total) / output_tokens if total is not None and output_tokens else None,
        "flops_per_s": per_s(total),
        "useful_flops_per_s": per_s(useful),
        "mfu": util(useful),
        "hfu": util(total),
        "peak_flops_per_s": peak,
        "source": rec.get("source"),
        "notes": list(rec.get("notes") or []) + ([mfu_note] if mfu_note else []),
    }


__all__ = [
    "CalflopsFit", "FlopsBreakdown", "FlopsUnavailable", "ForwardCost", "RequestTokens", "RunFlops",
    "TransformerShape", "analytical_cost", "attention_pairs", "calflops_available", "calflops_fit",
    "count_run_flops", "flops_summary", "generation_flops", "params_cost", "prefill_forward_flops",
    "run_flops", "transformer_shape",
]
