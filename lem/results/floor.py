"""Distance to the physical floor: the J/token a perfect engine would need on the run's devices.

Two limits, each at the devices' power limit (the enforced NVML limit when lem read one, else the
datasheet TDP from ``lem.measure.device_specs``, else ``hardware.power_w``):

- **compute floor** = useful FLOPs per output token ÷ (peak FLOP/s ÷ power) — every FLOP at the
  dense peak, drawing the full power limit;
- **memory-bandwidth floor** = bytes a decode step must read per output token ÷ (bandwidth ÷ power):
  per decode token, the weights once per step shared by its batch (weights ÷ batch, the batch each
  step actually ran, from the token timeline) plus that request's KV cache (context × KV bytes per
  token); prefill's reads are left out (a lower bound).

The floor is the larger of the two (a step can overlap compute and memory traffic at best); the
summary gives measured J/token (the compute devices' energy, gross and net of idle) ÷ floor. Devices
in decode often draw well under their limit, so measured J/token can fall below this floor; the
same limits in time (``roofline_fraction``: a perfect engine's seconds per token ÷ the run's) do
not depend on power.
On CPUs and devices missing from the table every figure is null unless ``hardware.*`` supplies them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lem.results.phase_energy import per
from lem.results.reader import RawProcessRecords

TERA, GIGA = 1e12, 1e9


def _user_limits(config: Mapping[str, Any] | None) -> dict[str, float]:
    hw = config.get("hardware") if isinstance(config, Mapping) else None
    if not isinstance(hw, Mapping):
        return {}
    scale = {"peak_tflops": TERA, "memory_bandwidth_gb_per_s": GIGA, "power_w": 1.0}
    return {k: float(hw[k]) * f for k, f in scale.items() if isinstance(hw.get(k), (int, float))}


def _enforced_power_w(procs: Sequence[RawProcessRecords]) -> list[float]:
    """Per measured GPU, the power limit in force: what a ``gpu_control`` record applied, else what the meter read."""
    applied = [d.get("enforced_power_limit_w") for p in procs for rec in p.others("gpu_control") for d in rec.get("devices") or []]
    if applied and all(isinstance(w, (int, float)) for w in applied):
        return [float(w) for w in applied]
    read = [(c.get("config") or {}).get("enforced_power_limit_w") for p in procs for m in p.others("energy_meter")
            for c in m.get("channels") or [] if c.get("component") == "gpu"]
    return [float(w) for w in read if isinstance(w, (int, float))]


def device_floor_limits(
    procs: Sequence[RawProcessRecords], config: Mapping[str, Any] | None, n_devices: int | None
) -> dict[str, Any]:
    """Peak FLOP/s, memory bandwidth and power of every device the run computes on, summed, with their sources."""
    from lem.measure.device_specs import device_limits

    h0 = procs[0].header
    user = _user_limits(config)
    on_gpu = h0.get("device_type") == "cuda"
    name = (h0.get("device_names") or [None])[0]
    spec = device_limits(name, h0.get("dtype")) if on_gpu else None
    n = n_devices or 1
    enforced = _enforced_power_w(procs) if on_gpu else []
    table = {
        "peak_flops_per_s": spec.peak_flops_per_s * n if spec and spec.peak_flops_per_s else None,
        "memory_bandwidth_bytes_per_s": spec.memory_bandwidth_bytes_per_s * n if spec else None,
        "power_w": (sum(enforced) if len(enforced) == n else spec.tdp_w * n if spec else None),
    }
    keys = {"peak_flops_per_s": "peak_tflops", "memory_bandwidth_bytes_per_s": "memory_bandwidth_gb_per_s", "power_w": "power_w"}
    out: dict[str, Any] = {}
    sources: dict[str, str | None] = {}
    for key, user_key in keys.items():
        if user_key in user:
            out[key], sources[key] = user[user_key], f"hardware.{user_key}"
        else:
            out[key] = table[key]
            if key == "power_w" and len(enforced) == n and out[key] is not None:
                sources[key] = "enforced NVML power limit"
            else:
                sources[key] = (f"{spec.name} x {n}: {spec.source}" if spec and out[key] is not None else None)
    out["sources"] = sources
    out["device"] = spec.name if spec else name
    return out


def floor_section(
    procs: Sequence[RawProcessRecords],
    config: Mapping[str, Any] | None,
    flops: Mapping[str, Any],
    *,
    output_tokens: int,
    decode_tokens: int,
    inverse_batch: Sequence[float],
    context_tokens: Sequence[float],
    accelerator_j: float | None,
    accelerator_net_j: float | None,
    generation_wall_s: float | None,
) -> dict[str, Any]:
    """The summary's ``floor`` section (all figures for the whole run, per output token)."""
    limits = device_floor_limits(procs, config, flops.get("n_devices"))
    peak, bandwidth, power = limits["peak_flops_per_s"], limits["memory_bandwidth_bytes_per_s"], limits["power_w"]
    records = [p.flops[-1] for p in procs if p.flops]
    weight_bytes = records[0].get("weight_bytes") if records else None
    kv_bytes = records[0].get("kv_cache_bytes_per_token") if records else None

    compute = None
    flops_per_token = flops.get("useful_flops_per_output_token")
    if flops_per_token is not None and peak and power:
        compute = float(flops_per_token) * power / peak
    bytes_per_decode_token = None
    if weight_bytes is not None and kv_bytes is not None and len(inverse_batch):
        bytes_per_decode_token = float(weight_bytes) * float(np.mean(inverse_batch)) + float(kv_bytes) * float(np.mean(context_tokens))
    memory = None
    if bytes_per_decode_token is not None and bandwidth and power and output_tokens:
        memory = bytes_per_decode_token * decode_tokens * power / bandwidth / output_tokens
    floor = max((x for x in (compute, memory) if x is not None), default=None)
    bound = None if floor is None else ("memory" if floor == memory else "compute")
    measured = per(accelerator_j, output_tokens)
    measured_net = per(accelerator_net_j, output_tokens)
    notes = []
    # The same limits in time: a perfect engine's seconds per output token against the run's own.
    time_floor = floor / power if floor is not None and power else None
    seconds_per_token = per(generation_wall_s, output_tokens)
    if measured is not None and floor is not None and measured < floor:
        notes.append(
            f"measured {measured:.3g} J/token is below the floor at the power limit ({floor:.3g}): the devices drew less "
            "than their limit while generating (the floor assumes the limit); the roofline fraction is the power-free comparison"
        )
    if floor is None:
        missing = [k for k, v in (("peak FLOP/s", peak), ("memory bandwidth", bandwidth), ("power", power)) if not v]
        if missing:
            notes.append(
                f"no {', '.join(missing)} for {limits['device']!r}: set hardware.peak_tflops, "
                "hardware.memory_bandwidth_gb_per_s and hardware.power_w for a floor"
            )
        if weight_bytes is None or kv_bytes is None:
            notes.append("model bytes unknown (no FLOPs record with weight and KV-cache sizes): no memory floor")
    return {
        "compute_j_per_output_token": compute,
        "memory_j_per_output_token": memory,
        "floor_j_per_output_token": floor,
        "bound": bound,
        "measured_j_per_output_token": measured,  # the compute devices' gross energy
        "measured_net_j_per_output_token": measured_net,
        "measured_over_floor": per(measured, floor),
        "net_measured_over_floor": per(measured_net, floor),
        "time_floor_s_per_output_token": time_floor,
        "roofline_fraction": per(time_floor, seconds_per_token),  # a perfect engine's time ÷ the measured time
        "bytes_per_decode_token": bytes_per_decode_token,
        "mean_decode_batch": 1.0 / float(np.mean(inverse_batch)) if len(inverse_batch) else None,  # harmonic mean
        "mean_decode_context_tokens": float(np.mean(context_tokens)) if len(context_tokens) else None,
        "weight_bytes": weight_bytes,
        "kv_cache_bytes_per_token": kv_bytes,
        **{k: limits[k] for k in ("device", "peak_flops_per_s", "memory_bandwidth_bytes_per_s", "power_w", "sources")},
        "notes": notes,
    }
