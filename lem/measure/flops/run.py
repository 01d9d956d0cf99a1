"""FLOPs of a run: forwards composed into each request's generation, the strategy chosen, derived metrics.

``count_run_flops`` is what the pipeline calls at the end of a run (a ``FlopsRecord``);
``flops_summary`` turns a record into FLOPs per token, FLOP/s, MFU and HFU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from lem.measure.flops.analytical import (
    SOURCE_PARAMS,
    FlopsUnavailable,
    ForwardCost,
    TransformerShape,
    as_cost,
    meta_model,
    params_cost,
    transformer_shape,
)
from lem.measure.flops.calflops_count import (
    CALFLOPS_FIT_LENGTHS,
    STRUCTURE_TOLERANCE,
    calflops_fit,
)
from lem.measure.gpu_peaks import peak_flops_per_s
from lem.records import FlopsRecord

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
    cost = as_cost(config_or_cost)
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
            chosen = params_cost(model if model is not None else meta_model(config, trust_remote_code))
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
