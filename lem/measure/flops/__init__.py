"""FLOPs of a generation phase: calflops, an analytical count, or 2 × parameters × tokens.

Usable without Hydra. What the pipeline calls at the end of a run::

    record = count_run_flops("auto", requests, model=backend.model, model_path=path, kv_cache=True,
                             device_names=["NVIDIA H100 80GB HBM3"] * 2, dtype="bfloat16")
    summary = flops_summary(record, output_tokens=..., generation_wall_s=..., input_tokens=..., device_type="cuda")

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

Two totals (see ``run_flops``), both reported per output token and per token (input +
output), each split into prefill and decode (``*_prefill_share``):

* **executed** (``total_flops``): what the engine computed. A padded batch
  (``padded_input_tokens`` set; rows grouped by cycle and ``batch_id``) runs every row at the
  padded width W and keeps decoding every row until its longest row has finished; requests
  without padding are counted alone.
* **useful** (``useful_flops``): each request alone, unpadded, KV cache on — the work its
  tokens needed. MFU uses useful FLOPs (PaLM's definition); HFU uses executed.

Prefill dominates both on short outputs (a forward over the whole prompt against one token
per decode step), so per-output-token figures are mostly prefill unless the share says not.

**Peak FLOP/s** (``lem.measure.gpu_peaks``) is summed over every GPU the run computes on:
each process records its engine's devices (``n_devices``: tensor × pipeline stages, or one
process driving every pipeline stage) and late aggregation adds the processes up, so MFU is
useful FLOP/s ÷ the peak of all of them, never of one.

Strategies (``FlopsStrategy``): ``calflops`` counts prefill forwards and one decode step of
the model (built on the meta device, eager attention, in a subprocess) and fits the
per-forward cost ``c + a·q + b·(query, key) pairs`` from them, which the executed/useful
composition then uses; ``analytical`` derives the same three coefficients from the HF
config; ``params`` uses 2 × (non-embedding parameters) per token fed and 2 × lm-head
parameters per logit row, attention matmuls ignored. ``auto`` tries them in that order; the
strategy used is ``source`` and every fallback's reason is in ``notes``.

Modules: ``analytical`` (the per-forward cost from a config, or 2 × parameters),
``calflops_count`` (calflops in a subprocess: ``calflops_worker``), ``run`` (forwards composed
into a run, ``count_run_flops``, ``flops_summary``), ``model_bytes`` (parameters, weight bytes per forward
and KV-cache bytes per token, recorded beside the count). Light to import: torch, transformers and
calflops are imported only when a count needs them.
"""

from lem.measure.flops.analytical import (
    FlopsUnavailable,
    ForwardCost,
    TransformerShape,
    analytical_cost,
    attention_pairs,
    params_cost,
    prefill_forward_flops,
    transformer_shape,
)
from lem.measure.flops.calflops_count import (
    CalflopsFit,
    calflops_available,
    calflops_fit,
)
from lem.measure.flops.model_bytes import ModelBytes, bytes_per_element, model_bytes
from lem.measure.flops.run import (
    FlopsBreakdown,
    RequestTokens,
    RunFlops,
    count_run_flops,
    flops_summary,
    generation_flops,
    run_flops,
)

__all__ = [
    "CalflopsFit", "FlopsBreakdown", "FlopsUnavailable", "ForwardCost", "ModelBytes", "RequestTokens", "RunFlops",
    "TransformerShape", "analytical_cost", "attention_pairs", "bytes_per_element", "calflops_available", "calflops_fit",
    "count_run_flops", "flops_summary", "generation_flops", "model_bytes", "params_cost", "prefill_forward_flops",
    "run_flops", "transformer_shape",
]
