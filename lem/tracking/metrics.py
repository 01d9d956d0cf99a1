"""A run's params and metrics: the config as dotted params, the summary as metric names with units.

Metric names carry their kind and unit: ``energy/j_per_output_token``,
``latency/ttft_ms_p50``, ``throughput/output_tokens_per_s``, ``flops/useful_flops_per_output_token``,
``memory/peak_rss_bytes``, per phase ``energy/phase/generation_j`` and per device
``energy/device/cuda_0/generation_j``. A figure nothing measured (null) is left out: MLflow
would have to show it as 0 or NaN, and lem never reports "not measured" as a number.
Needs no MLflow.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

from lem.tracking.run_folder import power_columns

LATENCY_STATS = ("mean", "p50", "p90", "p99", "max")
# Sections of summary.json whose numeric leaves become metrics ``<section>/<key>``.
_SECTIONS = ("throughput", "tokens", "energy", "flops", "memory", "batching")
_SKIP_KEYS = {"per_process", "by_component", "components", "source", "finish_reasons", "batch_size_histogram"}


# --- params -----------------------------------------------------------------------------------


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b.c": leaf}``; lists stay leaves."""
    out: dict[str, Any] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    elif prefix:
        out[prefix] = data
    return out


def param_value(v: Any) -> str:
    """Values spelled the way a Hydra override spells them: true/false/null, lists as JSON."""
    if isinstance(v, Enum):  # a structured config's enum: its YAML spelling, not ``BackendName.pytorch``
        v = v.value if isinstance(v.value, (str, int, float)) else v.name
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str)
    return str(v)


def config_params(config: Mapping[str, Any] | None) -> dict[str, str]:
    """The resolved config as dotted params (``batching.batch_size``), Hydra's own section left out."""
    if not config:
        return {}
    plain = {k: v for k, v in config.items() if k != "hydra"}
    return {k: param_value(v)[:6000] for k, v in sorted(flatten(plain).items())}


# --- metrics -----------------------------------------------------------------------------------


def metric_name(*parts: str) -> str:
    """Join parts with '/', each part cleaned to what MLflow accepts (``cuda:0`` → ``cuda_0``)."""
    return "/".join(re.sub(r"[^\w.\- ]+", "_", str(p)).strip() or "_" for p in parts if p != "")


def value_at(data: Any, dotted: str) -> Any:
    """The value at ``a.b.c`` of nested mappings; None where the path ends early."""
    node = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def finite_number(v: Any) -> float | None:
    """A finite int or float as a float; None for anything else (null, NaN, a bool, a string)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _leaves(section: Any, prefix: tuple[str, ...], out: dict[str, float]) -> None:
    # The path travels as parts: cleaning an already joined name would turn ``energy/co2`` into ``energy_co2``.
    if not isinstance(section, Mapping):
        return
    for k, v in section.items():
        if k in _SKIP_KEYS:
            continue
        if isinstance(v, Mapping):
            _leaves(v, (*prefix, str(k)), out)
        elif (x := finite_number(v)) is not None:
            out[metric_name(*prefix, str(k))] = x


def summary_metrics(summary: Mapping[str, Any] | None, processes: Iterable[Any] = ()) -> dict[str, float]:
    """Every number of the summary (and per-device figures from the raw records), named by kind with units."""
    out: dict[str, float] = {}
    if not summary:
        return out
    processes = list(processes)
    if (n := finite_number(summary.get("n_requests"))) is not None:
        out["run/n_requests"] = n
    out["run/n_warnings"] = float(len(summary.get("warnings") or []))
    for section in _SECTIONS:
        _leaves(summary.get(section), (section,), out)

    for metric, dist in (summary.get("latency") or {}).items():  # ttft_ms → latency/ttft_ms_p50
        if isinstance(dist, Mapping):
            for stat in LATENCY_STATS:
                if (x := finite_number(dist.get(stat))) is not None:
                    out[metric_name("latency", f"{metric}_{stat}")] = x

    energy = summary.get("energy") or {}
    for group in energy.get("by_component") or []:  # generation energy by component
        suffix = "" if group.get("source") != "estimated" else "_estimated"
        comp = str(group.get("component"))
        if (x := finite_number(group.get("energy_j"))) is not None:
            out[metric_name("energy", "component", f"{comp}{suffix}_j")] = x
        if (x := finite_number(group.get("j_per_output_token"))) is not None:
            out[metric_name("energy", "component", f"{comp}{suffix}_j_per_output_token")] = x

    for phase, ph in (summary.get("phases") or {}).items():
        if not isinstance(ph, Mapping):
            continue
        if (x := finite_number(ph.get("wall_s"))) is not None:
            out[metric_name("time", "phase", f"{phase}_s")] = x
        for key in ("energy_j", "measured_energy_j", "estimated_energy_j", "net_energy_j"):
            if (x := finite_number(ph.get(key))) is not None:
                name = "" if key == "energy_j" else key[: -len("_energy_j")] + "_"
                out[metric_name("energy", "phase", f"{phase}_{name}j")] = x
        for group in ph.get("energy_by_component") or []:
            suffix = "" if group.get("source") != "estimated" else "_estimated"
            if (x := finite_number(group.get("energy_j"))) is not None:
                out[metric_name("energy", "phase", str(phase), f"{group.get('component')}{suffix}_j")] = x

    out.update(device_metrics(processes))
    _memory_per_device(summary.get("memory") or {}, out, processes)
    return out


def _device_label(proc: Any, device: str, multi_host: bool) -> str:
    return f"{proc.header.get('hostname')}/{device}" if multi_host else device


def device_metrics(processes: list[Any]) -> dict[str, float]:
    """Per device: energy of every phase (gross and net of idle) and generation-window power/utilisation."""
    out: dict[str, float] = {}
    multi_host = len({p.header.get("hostname") for p in processes}) > 1
    sums: dict[str, float] = defaultdict(float)
    for p in processes:
        for ph in p.phases:
            for r in ph.get("energy") or []:
                dev = _device_label(p, str(r.get("device")), multi_host)
                for key, suffix in (("energy_j", "j"), ("net_energy_j", "net_j")):
                    if (x := finite_number(r.get(key))) is not None:
                        sums[metric_name("energy", "device", dev, f"{ph.get('name')}_{suffix}")] += x
    out.update(sums)

    for p in processes:
        gen = [ph for ph in p.phases if ph.get("name") == "generation"]
        if not gen:
            continue
        start, end = float(gen[0]["start_s"]), float(gen[-1]["end_s"])
        for dev, cols in power_columns(p).items():
            label = _device_label(p, dev, multi_host)
            idx = [i for i, t in enumerate(cols["t_s"]) if t is not None and start <= t <= end]
            for col, stat, unit in (
                ("power_w", "mean", "power_w"),
                ("power_w", "max", "power_w"),
                ("sm_util_pct", "mean", "sm_util_pct"),
                ("mem_util_pct", "mean", "mem_util_pct"),
                ("sm_clock_mhz", "mean", "sm_clock_mhz"),
                ("temp_c", "max", "temp_c"),
            ):
                column = cols.get(col) or []
                values = [v for i in idx if i < len(column) and (v := finite_number(column[i])) is not None]
                if values:
                    agg = max(values) if stat == "max" else sum(values) / len(values)
                    out[metric_name("device", label, f"generation_{stat}_{unit}")] = agg
    return out


def _memory_per_device(memory: Mapping[str, Any], out: dict[str, float], processes: list[Any] | None = None) -> None:
    """Peak CUDA memory per GPU (``memory/device/cuda_1/peak_allocated_bytes``), named like the energy metrics.

    Each process lists every CUDA device it could see (torch numbering); a GPU's peak is the
    highest any process on its host reached there, and a GPU no process allocated on is left out.
    """
    hosts = {p.process_index: str(p.header.get("hostname")) for p in processes or []}
    multi_host = len(set(hosts.values())) > 1
    peaks: dict[tuple[str, str], float] = {}
    for m in memory.get("per_process") or []:
        host = hosts.get(m.get("process_index"), "")
        for key, short in (("cuda_peak_allocated_bytes", "peak_allocated_bytes"), ("cuda_peak_reserved_bytes", "peak_reserved_bytes")):
            values = m.get(key)
            if not isinstance(values, list):
                continue
            for j, v in enumerate(values):
                if (x := finite_number(v)) is not None:
                    dev = f"{host}/cuda:{j}" if multi_host else f"cuda:{j}"  # cleaned as the energy metrics' labels are
                    peaks[(dev, short)] = max(peaks.get((dev, short), 0.0), x)
    for (dev, short), x in peaks.items():
        if x > 0 or peaks.get((dev, "peak_reserved_bytes"), 0.0) > 0:
            out[metric_name("memory", "device", dev, short)] = x
