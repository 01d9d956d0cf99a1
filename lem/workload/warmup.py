"""Warmup before the measured generation: the run's largest shapes first, then until power is steady.

Engine-independent (every engine warms up the same way), and recorded (``WarmupRecord``):

1. **The largest shapes the run will use**, at the run's output length: the planned batch with
   the most rows (widest among those), and the batch holding the longest prompt if that is
   another one. A compiled model (``torch_compile``) sizes its static KV cache and captures its
   graphs from the shapes it has seen; a warmup smaller than the run would recompile inside
   the measured window.
2. **Then more passes over the planned batches until measured power and SM clocks are steady**
   over two consecutive spans (``lem.measure.energy.stability``), at least
   ``run.warmup_batches`` passes and ``run.warmup_min_s``, at most ``run.warmup_max_s``. Without
   measured power (estimated energy only) the minimum passes and duration decide, and the record
   says so.

``run.warmup_batches=0`` disables warmup (a cold-start measurement).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

from lem.records import WarmupRecord
from lem.workload.types import GenerationParams, PreparedRequest


def largest_shapes(batches: Sequence[Sequence[PreparedRequest]]) -> list[Sequence[PreparedRequest]]:
    """The batch with the most rows (widest among those), and the one with the longest prompt if different."""
    if not batches:
        return []

    def width(batch: Sequence[PreparedRequest]) -> int:
        return max(r.input_tokens for r in batch)

    biggest = max(batches, key=lambda b: (len(b), width(b)))
    longest = max(batches, key=lambda b: (width(b), len(b)))
    return [biggest] if width(longest) <= width(biggest) else [biggest, longest]


def warm_up(
    backend: Any,
    batches: Sequence[Sequence[PreparedRequest]],
    params: GenerationParams,
    *,
    min_passes: int,
    min_s: float,
    max_s: float,
    max_output_tokens: int | None,
    meter: Any,
    on_pass: Callable[[int, float], None] | None = None,
) -> WarmupRecord:
    """Run warmup passes on ``backend`` (see the module docstring); ``meter`` is the run's started energy meter.

    ``on_pass(passes, elapsed_s)`` is called after every pass (the live progress display).
    """
    from lem.measure.energy.stability import (
        SETTLE_SPAN_S,
        level,
        measured_power_keys,
        steady,
    )

    out_tokens = params.max_output_tokens if max_output_tokens is None else min(params.max_output_tokens, max_output_tokens)
    warm = replace(params, max_output_tokens=out_tokens, min_output_tokens=min(params.min_output_tokens, out_tokens))
    t_begin = meter.now()
    if min_passes <= 0 or not batches:
        return WarmupRecord(0, 0, 0, 0, out_tokens, 0.0, None, "no warmup (run.warmup_batches=0): the first measured batch runs cold")
    shapes = largest_shapes(batches)
    watch = bool(measured_power_keys(meter))
    passes = requests = 0
    spans: list[float | None] = []
    previous = None
    span_start = t_begin
    stable: bool | None = None
    while True:
        # The largest shapes first, then the planned batches in serving order, round and round.
        batch = shapes[passes] if passes < len(shapes) else batches[(passes - len(shapes)) % len(batches)]
        backend.generate(list(batch), warm)
        passes += 1
        requests += len(batch)
        now = meter.now()
        if watch and now - span_start >= SETTLE_SPAN_S:
            current = level(meter, span_start, now)
            spans.append(current.total_power_w)
            stable = previous is not None and steady(previous, current)
            previous, span_start = current, now
        elapsed = now - t_begin
        if on_pass is not None:
            on_pass(passes, elapsed)
        minimum_done = passes >= max(min_passes, len(shapes)) and elapsed >= min_s
        if minimum_done and (not watch or stable):
            break
        if elapsed >= max_s:
            break
    elapsed = meter.now() - t_begin
    if not watch:
        stable = None
        criterion = (
            f"no measured power to watch (estimated energy only): {passes} pass(es), "
            f"at least run.warmup_batches={min_passes} and run.warmup_min_s={min_s:g}"
        )
    elif stable:
        criterion = f"measured power and SM clocks steady over two consecutive {SETTLE_SPAN_S:g} s spans after {passes} pass(es)"
    else:
        stable = False
        criterion = f"not steady after {elapsed:.3g} s (run.warmup_max_s={max_s:g}): the measured window may include the warm-up transient"
    return WarmupRecord(
        passes=passes,
        requests=requests,
        largest_batch_size=len(shapes[0]),
        largest_input_tokens=max(r.input_tokens for b in shapes for r in b),
        max_output_tokens=out_tokens,
        duration_s=elapsed,
        stable=stable,
        criterion=criterion,
        power_w_by_span=spans,
    )
