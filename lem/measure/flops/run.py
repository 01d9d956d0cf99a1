"""FLOPs of a run: forwards composed into each request's generation, the strategy chosen, derived metrics.

``count_run_flops`` is what the pipeline calls at the end of a run (a ``FlopsRecord``);
``flops_summary`` turns a record into FLOPs per token, FLOP/s, MFU and HFU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
from lem.measure.flops.model_bytes import model_bytes
from lem.measure.gpu_peaks import devices_peak_flops_per_s, peak_flops_per_s
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
    batch_id: int | None = None  # rows of one padded batch share it (within one cycle)
    cycle: int = 0  # measured cycle that served it: batch ids restart every cycle


def _as_request(r: Any) -> RequestTokens:
    if isinstance(r, RequestTokens):
        return r
    if isinstance(r, Mapping):
        return RequestTokens(
            int(r["input_tokens"]), int(r["output_tokens"]), r.get("padded_input_tokens"), r.get("batch_id"), int(r.get("cycle") or 0)
        )
    if isinstance(r, Sequence):
        return RequestTokens(*r)
    return RequestTokens(
        r.input_tokens, r.output_tokens, getattr(r, "padded_input_tokens", None), getattr(r, "batch_id", None), int(getattr(r, "cycle", 0) or 0)
    )


@dataclass(frozen=True)
class RunFlops:
    executed: FlopsBreakdown  # what the engine computed: padding and finished rows of a padded batch included
    useful: FlopsBreakdown  # each request alone, unpadded, with a KV cache


def run_flops(cost: ForwardCost, requests: Iterable[Any], *, kv_cache: bool = True, causal_attention: bool = False) -> RunFlops:
    """Executed and useful FLOPs of a run's requests (``RequestTokens``, ``RequestRecord``s, dicts or tuples).

    Rows with ``padded_input_tokens`` are grouped by (``cycle``, ``batch_id``): batch ids restart
    every measured cycle, so the same id in two cycles is two batches. A padded batch of B rows
    runs at its widest padded width and decodes ``max(output_tokens)`` steps for every row
    (static batching keeps finished rows in the batch). Requests without padding are counted alone.
    """
    reqs = [_as_request(r) for r in requests]
    executed, useful = ZERO, ZERO
    batches: dict[Any, list[RequestTokens]] = {}
    for i, r in enumerate(reqs):
        useful += generation_flops(cost, r.input_tokens, r.output_tokens, kv_cache=True, causal_attention=causal_attention)
        if r.padded_input_tokens is None:
            executed += generation_flops(cost, r.input_tokens, r.output_tokens, kv_cache=kv_cache, causal_attention=causal_attention)
        else:
            batches.setdefault((r.cycle, r.batch_id) if r.batch_id is not None else ("alone", i), []).append(r)
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
    device_names: Sequence[str] | None = None,
    quantization: str | None = None,
) -> FlopsRecord:
    """FLOPs of a run's generation phase as a ``FlopsRecord`` (strategy used in ``source``, reasons in ``notes``).

    ``strategy``: a ``FlopsStrategy`` or its value (auto | calflops | analytical | params | off).
    ``requests``: the run's ``RequestRecord``s (or anything with input_tokens, output_tokens,
    padded_input_tokens, batch_id). ``model``: the loaded HF model (for its config and the
    params count); or ``config`` / ``model_path`` when no model is in this process.
    ``device_names``/``dtype``: every GPU the engine computes on (``torch.cuda.get_device_name(i)``
    for each tensor/pipeline stage) and the compute dtype, for the peak FLOP/s stored beside the
    count: summed over the devices (None on CPU). ``device_name``: one GPU, the same as a list of one.
    ``dtype`` and ``quantization`` (the engine's weight quantisation: int8, int4, fp8, awq, ...; None or
    "none": none) also give the model's bytes (``n_params``, ``weight_bytes``, ``kv_cache_bytes_per_token``;
    see ``lem.measure.flops.model_bytes``), recorded whatever the strategy.
    """
    name = str(getattr(strategy, "value", strategy))
    if name not in ("auto", "calflops", "analytical", "params", "off"):
        raise ValueError(f"flops.strategy={name}: expected one of auto, calflops, analytical, params, off")
    reqs = [_as_request(r) for r in requests]
    common = _device_peaks(list(device_names) if device_names else ([device_name] if device_name else []), dtype, tf32)
    if config is None and model is not None:
        config = getattr(model, "config", None)
    sizes = model_bytes(model, config, dtype, quantization=quantization)
    common |= {"n_params": sizes.n_params, "weight_bytes": sizes.weight_bytes, "kv_cache_bytes_per_token": sizes.kv_cache_bytes_per_token}
    if name == "off":
        return FlopsRecord(strategy=name, notes=["flops.strategy=off: not counted", *sizes.notes], **common)

    notes: list[str] = list(sizes.notes)
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
        return FlopsRecord(strategy=name, notes=notes, **common)

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
        useful_prefill_flops=result.useful.prefill_flops,
        useful_decode_flops=result.useful.decode_flops,
        strategy=name,
        calflops_vs_analytical=cross_check,
        notes=notes,
        forward_cost={"per_token_flops": chosen.per_token_flops, "per_query_key_flops": chosen.per_query_key_flops,
                      "per_logit_flops": chosen.per_logit_flops},
        **common,
    )


def _device_peaks(names: list[str], dtype: str | None, tf32: bool) -> dict[str, Any]:
    """The record's peak fields: summed over every device the engine computes on, and one device's."""
    if not names:
        return {"peak_flops_per_s": None, "n_devices": None, "peak_flops_per_s_per_device": None}
    each = {peak_flops_per_s(n, dtype, tf32=tf32) if dtype else None for n in names}
    return {
        "peak_flops_per_s": devices_peak_flops_per_s(names, dtype, tf32=tf32) if dtype else None,
        "n_devices": len(names),
        "peak_flops_per_s_per_device": next(iter(each)) if len(each) == 1 else None,  # None: the GPUs differ
    }


def flops_summary(
    record: FlopsRecord | Mapping[str, Any],
    output_tokens: int,
    generation_wall_s: float | None,
    *,
    input_tokens: int | None = None,
    device_name: str | None = None,
    dtype: str | None = None,
    device_type: str | None = None,
    tf32: bool = False,
    n_devices: int | None = None,
) -> dict[str, Any]:
    """Derived compute metrics: executed and useful FLOPs per token, prefill shares, FLOP/s, MFU and HFU.

    Two totals, each per output token and per token (input + output), and each split into
    prefill and decode: **executed** (``total_flops``: padding and a padded batch's finished
    rows included) and **useful** (real tokens only, each request alone). ``flops_per_s`` =
    executed FLOPs / generation wall time. ``mfu`` = useful FLOPs / wall / peak (PaLM's model
    FLOPs utilisation); ``hfu`` uses executed FLOPs. The peak is summed over every device the
    run computes on (the record's, else ``n_devices`` × ``device_name``'s). Both null on CPU
    and on GPUs missing from the peak table.
    """
    rec = record if isinstance(record, Mapping) else record.__dict__
    total, useful = rec.get("total_flops"), rec.get("useful_flops")
    on_cpu = device_type == "cpu"
    devices = rec.get("n_devices") or n_devices
    peak = None if on_cpu else rec.get("peak_flops_per_s")
    per_device = None if on_cpu else rec.get("peak_flops_per_s_per_device")
    if peak is None and not on_cpu and device_name and dtype:
        per_device = peak_flops_per_s(device_name, dtype, tf32=tf32)
        peak = per_device * (devices or 1) if per_device is not None else None
    wall = generation_wall_s if generation_wall_s and generation_wall_s > 0 else None
    n_tokens = output_tokens + input_tokens if input_tokens is not None else None

    def ratio(x: Any, y: Any) -> float | None:
        return float(x) / y if x is not None and y else None

    def share(prefill: Any, decode: Any) -> float | None:
        return ratio(prefill, float(prefill) + float(decode)) if prefill is not None and decode is not None else None

    if on_cpu:
        mfu_note = "MFU is null on CPU: no peak FLOP/s table for CPUs"
    elif peak is None:
        mfu_note = f"MFU is null: no peak FLOP/s for device={device_name!r} dtype={dtype!r}"
    else:
        mfu_note = None
    return {
        "total_flops": total,  # executed
        "useful_flops": useful,
        "prefill_flops": rec.get("prefill_flops"),  # executed
        "decode_flops": rec.get("decode_flops"),
        "useful_prefill_flops": rec.get("useful_prefill_flops"),
        "useful_decode_flops": rec.get("useful_decode_flops"),
        "executed_flops_per_output_token": ratio(total, output_tokens),
        "useful_flops_per_output_token": ratio(useful, output_tokens),
        "executed_flops_per_token": ratio(total, n_tokens),
        "useful_flops_per_token": ratio(useful, n_tokens),
        "executed_prefill_share": share(rec.get("prefill_flops"), rec.get("decode_flops")),
        "useful_prefill_share": share(rec.get("useful_prefill_flops"), rec.get("useful_decode_flops")),
        "flops_per_s": ratio(total, wall),  # executed
        "useful_flops_per_s": ratio(useful, wall),
        "mfu": ratio(ratio(useful, wall), peak),
        "hfu": ratio(ratio(total, wall), peak),
        "peak_flops_per_s": peak,  # summed over n_devices
        "n_devices": devices,
        "peak_flops_per_s_per_device": per_device,
        "source": rec.get("source"),
        "notes": list(rec.get("notes") or []) + ([mfu_note] if mfu_note else []),
    }
