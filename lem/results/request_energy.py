"""Energy per request, prefill vs decode, and three energy boundaries — from the raw records.

Each process's measured generation (each cycle) is split among its requests by
``lem.results.attribution``: per device, the phase's energy (the figure the headline uses) is
spread over time by that device's timeline (cumulative counter, integrated power samples, or the
estimate's series) and then split by work; the idle baseline is split the same way, so each
request's energy net of idle is its gross share minus its idle share.

Three boundaries, each labelled wherever it is reported:

- ``accelerator_net``: the devices that compute (the GPUs; the CPU package on a CPU-only run), net of idle;
- ``device_host_gross``: those devices plus the host's CPU and DRAM, gross (everything they drew);
- ``all_in``: everything every metered device drew over the whole run — setup, idle baseline,
  warmup, generation and the gaps between them — times the data centre's PUE, shared among the
  requests in proportion to their gross generation energy, in Wh per request (comparable with
  published per-prompt figures, which take the same wide boundary).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lem.results.attribution import (
    DECODE,
    PREFILL,
    SlicePlan,
    Split,
    WorkItems,
    decode_batch_sizes,
    slice_edges,
    work_items,
)
from lem.results.latency import distribution
from lem.results.phase_energy import ESTIMATED_SOURCE
from lem.results.reader import RawProcessRecords

J_PER_WH = 3600.0
BOUNDARY_LABELS = {
    "accelerator_net": "compute devices, net of idle",
    "device_host_gross": "compute devices + host CPU/DRAM, gross",
    "all_in": "whole run on every metered device (setup, idle, gaps included) x PUE",
}
METHOD = (
    "each interval between token times split among the requests computing in it, in proportion to their work "
    "(prefill and decode FLOPs, spread evenly over each step); intervals with no computation split equally among "
    "the requests waiting then; each device's phase energy spread over time by its own timeline"
)


@dataclass
class RunAttribution:
    """Per request (one entry per request record, in order) and per boundary, for the whole run."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # request_id, cycle, process_index, tokens
    gross: Split | None = None  # every metered component (gross)
    accel: Split | None = None  # compute devices (gross)
    accel_idle: Split | None = None  # their idle baseline, split the same way; None without a baseline
    components: dict[str, set[str]] = field(default_factory=lambda: {"accelerator": set(), "host": set()})
    sources: dict[str, set[str]] = field(default_factory=lambda: {"accelerator": set(), "host": set()})
    left_out: set[str] = field(default_factory=set)  # "cpu (estimated)": estimates not added to measured energy
    weighting: set[str] = field(default_factory=set)
    shapes: set[str] = field(default_factory=set)  # "timeline" | "uniform in time"
    inverse_batch: list[float] = field(default_factory=list)  # 1 / decode batch of every decode step
    context_tokens: list[float] = field(default_factory=list)  # KV length of every decode step
    decode_tokens: int = 0
    prefill_tokens: int = 0


def _cumulative_j(series: Mapping[str, Any] | None, t: np.ndarray) -> np.ndarray | None:
    """A device's cumulative energy at times ``t`` from its timeline; None when it does not cover them."""
    if not series:
        return None
    rows = series["rows"]
    if series.get("source"):
        pts = [(r["t_s"], r["energy_j"]) for r in rows if r.get("energy_j") is not None]
        ts, es = np.asarray([p[0] for p in pts], float), np.asarray([p[1] for p in pts], float)
    elif series.get("power_kind") in ("instant", "power_usage"):
        pts = [(r["t_s"], r["power_w"]) for r in rows if r.get("power_w") is not None]
        ts, ws = np.asarray([p[0] for p in pts], float), np.asarray([p[1] for p in pts], float)
        es = np.concatenate([[0.0], np.cumsum(np.diff(ts) * (ws[1:] + ws[:-1]) / 2)]) if len(ts) else ts
    else:
        return None
    if len(ts) < 2 or ts[0] > t[0] + 1e-6 or ts[-1] < t[-1] - 1e-6:
        return None
    return np.interp(t, ts, es)


def _slice_energy(reading: Mapping[str, Any], series: Mapping[str, Any] | None, edges: np.ndarray) -> tuple[np.ndarray, str]:
    """The reading's energy over each slice: its timeline's shape scaled to the reading's total."""
    total = float(reading["energy_j"])
    cumulative = _cumulative_j(series, edges)
    if cumulative is not None:
        steps = np.maximum(np.diff(cumulative), 0.0)
        if steps.sum() > 0:
            return steps * (total / steps.sum()), "timeline"
    dt = np.diff(edges)
    return dt * (total / dt.sum() if dt.sum() > 0 else 0.0), "uniform in time"


def _is_measured(reading: Mapping[str, Any]) -> bool:
    return reading.get("source") != ESTIMATED_SOURCE


def _add(a: Split | None, b: Split) -> Split:
    return b if a is None else a + b


def attribute_run(procs: list[RawProcessRecords], series: Mapping[tuple[int, str, str], Mapping[str, Any]]) -> RunAttribution:
    """Split every process's generation energy (each cycle) among its requests."""
    out = RunAttribution()
    blocks: list[tuple[Split | None, Split | None, Split | None, int]] = []
    # Measured and estimated energy are never added: with any sensor reading, only sensors are split
    # (the estimates are named in ``left_out``), as the headline generation energy does.
    measured = any(_is_measured(r) for p in procs for ph in p.phases if ph.get("name") == "generation" for r in ph.get("energy") or [])
    for p in procs:
        cost = (p.flops[-1].get("forward_cost") if p.flops else None) or None
        phases = [ph for ph in p.phases if ph.get("name") == "generation"]
        for r in (r for ph in phases for r in ph.get("energy") or [] if _is_measured(r) != measured):
            out.left_out.add(f"{r.get('component')} ({r.get('source')})")
        readings_all = [r for ph in phases for r in ph.get("energy") or [] if r.get("energy_j") is not None and _is_measured(r) == measured]
        has_gpu = any(r.get("component") == "gpu" for r in readings_all)
        only_system = bool(readings_all) and all(r.get("component") == "system" for r in readings_all)
        for ph in phases:
            cycle = int(ph.get("cycle") or 0)
            reqs = [r for r in p.requests if int(r.get("cycle") or 0) == cycle]
            if not reqs:
                continue
            items = work_items(reqs, cost)
            edges = slice_edges(items, reqs, (float(ph["start_s"]), float(ph["end_s"])))
            plan = SlicePlan(items, reqs, edges)  # one plan for every device's energy and the idle baseline
            out.weighting.add(items.weighting)
            _step_shapes(out, items, reqs)
            gross = accel = idle = None
            idle_known = True
            complete = True
            for r in ph.get("energy") or []:
                component = str(r.get("component"))
                if _is_measured(r) != measured or (component == "system" and not only_system):
                    continue
                if r.get("energy_j") is None:  # a metered device without a reading: no total, so no split
                    complete = False
                    continue
                energy, shape = _slice_energy(r, series.get((id(p), str(r["device"]), component)), edges)
                out.shapes.add(shape)
                split = plan.split(energy)
                gross = _add(gross, split)
                role = "accelerator" if component == ("gpu" if has_gpu else "cpu") or only_system else "host"
                out.components[role].add(component)
                out.sources[role].add(str(r.get("source")))
                if role == "accelerator":
                    accel = _add(accel, split)
                    if r.get("idle_power_w") is None:
                        idle_known = False
                    else:
                        idle = _add(idle, plan.split(np.diff(edges) * float(r["idle_power_w"])))
            if not complete:
                gross = accel = idle = None
            blocks.append((gross, accel, idle if idle_known else None, len(reqs)))
            out.rows += [
                {"request_id": r["request_id"], "cycle": cycle, "process_index": p.process_index,
                 "input_tokens": int(r["input_tokens"]), "output_tokens": int(r["output_tokens"])}
                for r in reqs
            ]
    out.gross = _concat([b[0] for b in blocks], [b[3] for b in blocks])
    out.accel = _concat([b[1] for b in blocks], [b[3] for b in blocks])
    out.accel_idle = _concat([b[2] for b in blocks], [b[3] for b in blocks])
    return out


def _step_shapes(out: RunAttribution, items: WorkItems, reqs: Sequence[Mapping[str, Any]]) -> None:
    """What the physical floor needs from this cycle: each decode step's batch and context length."""
    dec = items.kind == DECODE
    n_in = np.asarray([int(r["input_tokens"]) for r in reqs])
    steps = np.arange(len(items.kind)) - np.searchsorted(items.request, items.request, side="left")  # k-th item of its request
    out.inverse_batch += (1.0 / decode_batch_sizes(items)).tolist()
    out.context_tokens += (n_in[items.request[dec]] + steps[dec]).astype(float).tolist()
    out.decode_tokens += int(dec.sum())
    out.prefill_tokens += int(n_in[np.unique(items.request[items.kind == PREFILL])].sum()) if len(items.kind) else 0


def _concat(splits: list[Split | None], sizes: list[int]) -> Split | None:
    """Join per-block splits into one over every request of the run; None if any block lacks it."""
    if not splits or any(s is None for s in splits):
        return None
    parts = [s for s in splits if s is not None]
    return Split(
        np.concatenate([s.prefill_j for s in parts]), np.concatenate([s.decode_j for s in parts]),
        np.concatenate([s.waiting_j for s in parts]), sum(s.unattributed_j for s in parts), sum(s.total_j for s in parts),
    )


def _net(gross: Split | None, idle: Split | None) -> Split | None:
    return gross + idle.scaled(-1.0) if gross is not None and idle is not None else None


def _phases(split: Split | None, prefill_tokens: int, decode_tokens: int) -> dict[str, Any] | None:
    """Prefill vs decode (and waiting, unattributed) energy of one boundary."""
    if split is None:
        return None
    parts = {"prefill_j": float(split.prefill_j.sum()), "decode_j": float(split.decode_j.sum()),
             "waiting_j": float(split.waiting_j.sum()), "unattributed_j": split.unattributed_j}
    total = split.total_j
    return {
        **parts,
        **{k.replace("_j", "_share"): (v / total if total else None) for k, v in parts.items()},
        "j_per_prefill_token": parts["prefill_j"] / prefill_tokens if prefill_tokens else None,
        "j_per_decode_token": parts["decode_j"] / decode_tokens if decode_tokens else None,
    }


def _length_fit(rows: list[dict[str, Any]], j: np.ndarray) -> dict[str, Any]:
    """Least squares J per request = fixed + a x input tokens + b x output tokens (terms that vary only)."""
    x_in = np.asarray([r["input_tokens"] for r in rows], float)
    x_out = np.asarray([r["output_tokens"] for r in rows], float)
    terms = {"j_per_input_token": x_in, "j_per_output_token": x_out}
    used = [k for k, v in terms.items() if len(v) > 2 and np.ptp(v) > 0]
    fit: dict[str, Any] = {"j_fixed": None, "j_per_input_token": None, "j_per_output_token": None, "r2": None, "n": len(rows)}
    if len(rows) < len(used) + 2:
        return fit
    design = np.column_stack([np.ones(len(rows))] + [terms[k] for k in used])
    coef, *_ = np.linalg.lstsq(design, j, rcond=None)
    predicted = design @ coef
    spread = float(((j - j.mean()) ** 2).sum())
    fit.update({"j_fixed": float(coef[0]), **{k: float(c) for k, c in zip(used, coef[1:])}})
    fit["r2"] = 1.0 - float(((j - predicted) ** 2).sum()) / spread if spread > 0 else None
    return fit


def attribution_section(
    att: RunAttribution, run_energy_j: float | None, pue: float | None, warnings: list[str]
) -> dict[str, Any]:
    """The summary's ``attribution`` section (``run_energy_j``: every metered device over the whole run)."""
    gross, accel_net = att.gross, _net(att.accel, att.accel_idle)
    empty = gross is None or not att.rows
    all_in_total = run_energy_j * (pue or 1.0) if run_energy_j is not None and not empty else None
    attributed = float(gross.request_j.sum()) if gross is not None else 0.0
    all_in = gross.request_j * (all_in_total / attributed) if all_in_total is not None and attributed > 0 else None

    def label(role_sets: list[str]) -> str | None:
        sources = sorted({s for role in role_sets for s in att.sources[role]})
        return "+".join(sources) or None

    def boundary(name: str, split_j: np.ndarray | None, roles: list[str], **extra: Any) -> dict[str, Any]:
        source = label(roles)
        return {
            "label": BOUNDARY_LABELS[name],
            "components": sorted({c for role in roles for c in att.components[role]}),
            "energy_source": source,
            "estimated": ESTIMATED_SOURCE in (source or "").split("+"),
            "j_per_request": distribution(split_j.tolist() if split_j is not None else []),
            "total_j": float(split_j.sum()) if split_j is not None else None,
            "left_out": sorted(att.left_out),  # estimated components beside measured ones: reported apart, never added
            **extra,
        }

    check = None
    if gross is not None:
        residual = gross.residual_j
        check = {"generation_energy_j": gross.total_j, "attributed_j": attributed, "unattributed_j": gross.unattributed_j,
                 "residual_j": residual, "residual_fraction": residual / gross.total_j if gross.total_j else None}
        if gross.total_j and abs(residual / gross.total_j) > 1e-6:
            warnings.append(f"energy per request does not add up: {residual:.3g} J of {gross.total_j:.4g} J unplaced")
    return {
        "method": METHOD,
        "weighting": "+".join(sorted(att.weighting)) or None,
        "energy_shape": "+".join(sorted(att.shapes)) or None,
        "n_requests": len(att.rows),
        "boundaries": {
            "accelerator_net": boundary("accelerator_net", accel_net.request_j if accel_net else None, ["accelerator"]),
            "device_host_gross": boundary("device_host_gross", None if empty else gross.request_j, ["accelerator", "host"]),
            "all_in": {
                **boundary("all_in", all_in, ["accelerator", "host"]),
                "wh_per_request": distribution((all_in / J_PER_WH).tolist() if all_in is not None else []),
                "run_energy_j": run_energy_j,
                "pue": pue,
            },
        },
        "prefill_decode": {
            "device_host_gross": _phases(gross, att.prefill_tokens, att.decode_tokens),
            "accelerator_net": _phases(accel_net, att.prefill_tokens, att.decode_tokens),
            "prefill_tokens": att.prefill_tokens,
            "decode_tokens": att.decode_tokens,
        },
        "vs_length": _length_fit(att.rows, gross.request_j) if gross is not None and att.rows else None,
        "check": check,
    }


def request_rows(att: RunAttribution, run_energy_j: float | None, pue: float | None) -> list[dict[str, Any]]:
    """One row per request: its energy at each boundary and its prefill/decode/waiting parts (``request_energy.jsonl``)."""
    gross, net = att.gross, _net(att.accel, att.accel_idle)
    attributed = float(gross.request_j.sum()) if gross is not None else 0.0
    factor = run_energy_j * (pue or 1.0) / attributed if run_energy_j is not None and attributed > 0 else None
    rows = []
    for i, row in enumerate(att.rows):
        g = gross.request_j[i] if gross is not None else None
        rows.append({
            **row,
            "accelerator_net_j": float(net.request_j[i]) if net is not None else None,
            "device_host_gross_j": float(g) if g is not None else None,
            "all_in_wh": float(g * factor / J_PER_WH) if g is not None and factor is not None else None,
            "prefill_j": float(gross.prefill_j[i]) if gross is not None else None,
            "decode_j": float(gross.decode_j[i]) if gross is not None else None,
            "waiting_j": float(gross.waiting_j[i]) if gross is not None else None,
        })
    return rows
