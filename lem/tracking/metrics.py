"""A run's params and metrics: the active parts of the config as dotted params, the summary as
one metric name per quantity, with its unit.

The figures that answer "what did it cost, how fast was it" are under ``headline/`` and only
there (:data:`HEADLINE_METRICS`); the rest are namespaced by kind, unit last:
``latency/ttft_ms_p90``, ``throughput/total_tokens_per_s``, ``energy/phase/generation_j``,
``energy/device/cuda_0/generation_j``, ``device/cuda_0/generation_max_power_w``,
``memory/device/cuda_0/peak_allocated_bytes``. Configuration echoes (batch size), timestamps,
derived duplicates (tokens per joule) and lem's own diagnostics stay in ``summary.json``, which
is an artifact of every run. A figure nothing measured (null) is left out: MLflow would have to
show it as 0 or NaN, and lem never reports "not measured" as a number. An estimated figure keeps
the measured figure's name (one column per quantity); the run's tag ``lem.energy_source`` says
which it is. The power timeline is ``lem.tracking.system_metrics``. Needs no MLflow.
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

# MLflow name -> dotted path in summary.json: the answer, in the column lem's runs view sorts by.
HEADLINE_METRICS: dict[str, str] = {
    "headline/j_per_output_token": "energy.j_per_output_token",
    "headline/net_j_per_output_token": "energy.net_j_per_output_token",
    "headline/output_tokens_per_s": "throughput.output_tokens_per_s",
    "headline/ttft_ms_p50": "latency.ttft_ms.p50",
    "headline/ttft_ms_p99": "latency.ttft_ms.p99",
    "headline/tpot_ms_p50": "latency.tpot_ms.p50",
}
# Every other single figure of the summary that is a measurement: MLflow name -> dotted path.
SUMMARY_METRICS: dict[str, str] = {
    "run/n_requests": "n_requests",
    "throughput/total_tokens_per_s": "throughput.total_tokens_per_s",
    "throughput/requests_per_s": "throughput.requests_per_s",
    "tokens/input_tokens": "tokens.input_tokens",
    "tokens/output_tokens": "tokens.output_tokens",
    "tokens/mean_input_tokens": "tokens.mean_input_tokens",
    "tokens/mean_output_tokens": "tokens.mean_output_tokens",
    "tokens/truncated_prompts": "tokens.truncated_prompts",
    "energy/j_per_request": "energy.j_per_request",
    "energy/net_j_per_output_token_uncertainty": "energy.net_j_per_output_token_uncertainty",
    "energy/mean_power_w": "energy.mean_power_w",
    "energy/net_mean_power_w": "energy.net_mean_power_w",
    "energy/idle_power_w": "energy.idle_power_w",
    "energy/run_energy_j": "energy.run_energy_j",
    "energy/unattributed_energy_j": "energy.unattributed_energy_j",
    "energy/sampler_cpu_pct": "energy.sampler_cpu_pct",
    "energy/steady_state/wall_s": "energy.steady_state.wall_s",
    "energy/steady_state/concurrency": "energy.steady_state.concurrency",
    "energy/steady_state/j_per_output_token": "energy.steady_state.j_per_output_token",
    "energy/steady_state/net_j_per_output_token": "energy.steady_state.net_j_per_output_token",
    "energy/co2/co2_g": "energy.co2.co2_g",
    "energy/co2/generation_co2_g": "energy.co2.generation_co2_g",
    "energy/co2/co2_g_per_output_token": "energy.co2.co2_g_per_output_token",
    "energy/co2/estimated_co2_g_apart": "energy.co2.estimated_co2_g_apart",
    "flops/total_flops": "flops.total_flops",
    "flops/useful_flops": "flops.useful_flops",
    "flops/prefill_flops": "flops.prefill_flops",
    "flops/decode_flops": "flops.decode_flops",
    "flops/useful_prefill_flops": "flops.useful_prefill_flops",
    "flops/useful_decode_flops": "flops.useful_decode_flops",
    "flops/executed_flops_per_output_token": "flops.executed_flops_per_output_token",
    "flops/useful_flops_per_output_token": "flops.useful_flops_per_output_token",
    "flops/executed_flops_per_token": "flops.executed_flops_per_token",
    "flops/useful_flops_per_token": "flops.useful_flops_per_token",
    "flops/flops_per_s": "flops.flops_per_s",
    "flops/useful_flops_per_s": "flops.useful_flops_per_s",
    "flops/mfu": "flops.mfu",
    "flops/hfu": "flops.hfu",
    "memory/peak_rss_bytes": "memory.peak_rss_bytes",
    "batching/n_batches": "batching.n_batches",
    "batching/mean_batch_size": "batching.mean_batch_size",
    "batching/padded_input_tokens": "batching.padded_input_tokens",
    "batching/padding_fraction": "batching.padding_fraction",
    "batching/engine_steps/n_steps": "batching.engine_steps.n_steps",
    "batching/engine_steps/mean_running": "batching.engine_steps.mean_running",
    "batching/engine_steps/max_running": "batching.engine_steps.max_running",
    "batching/engine_steps/mean_waiting": "batching.engine_steps.mean_waiting",
    "batching/engine_steps/max_waiting": "batching.engine_steps.max_waiting",
    "traffic/achieved_qps": "traffic.achieved_qps",
    # Energy per request at three boundaries, prefill vs decode, the physical floor, goodput (issue 18).
    "request/compute_net_j_p50": "attribution.boundaries.accelerator_net.j_per_request.p50",
    "request/compute_net_j_p99": "attribution.boundaries.accelerator_net.j_per_request.p99",
    "request/gross_j_p50": "attribution.boundaries.device_host_gross.j_per_request.p50",
    "request/gross_j_p99": "attribution.boundaries.device_host_gross.j_per_request.p99",
    "request/all_in_wh_mean": "attribution.boundaries.all_in.wh_per_request.mean",
    "energy/prefill_share": "attribution.prefill_decode.device_host_gross.prefill_share",
    "energy/j_per_prefill_token": "attribution.prefill_decode.device_host_gross.j_per_prefill_token",
    "energy/j_per_decode_token": "attribution.prefill_decode.device_host_gross.j_per_decode_token",
    "energy/net_j_per_prefill_token": "attribution.prefill_decode.accelerator_net.j_per_prefill_token",
    "energy/net_j_per_decode_token": "attribution.prefill_decode.accelerator_net.j_per_decode_token",
    "floor/j_per_output_token": "floor.floor_j_per_output_token",
    "floor/measured_over_floor": "floor.measured_over_floor",
    "floor/net_measured_over_floor": "floor.net_measured_over_floor",
    "floor/roofline_fraction": "floor.roofline_fraction",
    "goodput/requests_per_s": "goodput.goodput_requests_per_s",
    "goodput/good_fraction": "goodput.good_fraction",
    "goodput/j_per_good_output_token": "goodput.j_per_good_output_token",
    "goodput/net_j_per_good_output_token": "goodput.net_j_per_good_output_token",
}
LATENCY_STATS = ("mean", "p50", "p90", "p99", "max")
# Phases whose net-of-idle energy is a figure (idle net of idle is 0 by construction).
_NO_NET_PHASES = {"idle_baseline"}
# The cycles' spread (cycles=N): the 95 % CI of each headline quantity (lem.results.cycles); their mean is the headline.
_CYCLE_STATS = ("j_per_output_token", "net_j_per_output_token", "output_tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50")


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
    """The resolved config as dotted params (``batching.batch_size``): everything that made the run,
    so it can be run again from its params — less Hydra's own section and the knobs of the engines
    that did not run (``backend.vllm.*`` on a PyTorch run; ``backend.name`` says which one ran)."""
    if not config:
        return {}
    plain = {k: v for k, v in config.items() if k != "hydra"}
    backend = plain.get("backend")
    if isinstance(backend, Mapping):
        active = param_value(backend.get("name"))
        plain["backend"] = {k: v for k, v in backend.items() if k == active or not isinstance(v, Mapping)}
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


def _put(out: dict[str, float], name: str, value: Any) -> None:
    if (x := finite_number(value)) is not None:
        out[name] = x


def summary_metrics(summary: Mapping[str, Any] | None, processes: Iterable[Any] = ()) -> dict[str, float]:
    """The summary's measurements (and per-device figures from the raw records), one name per quantity."""
    out: dict[str, float] = {}
    if not summary:
        return out
    processes = list(processes)
    for name, path in (*HEADLINE_METRICS.items(), *SUMMARY_METRICS.items()):
        _put(out, name, value_at(summary, path))
    out["run/n_warnings"] = float(len(summary.get("warnings") or []))

    headline_paths = set(HEADLINE_METRICS.values())
    for metric, dist in (summary.get("latency") or {}).items():  # ttft_ms → latency/ttft_ms_p90
        if isinstance(dist, Mapping):
            for stat in LATENCY_STATS:
                if f"latency.{metric}.{stat}" not in headline_paths:
                    _put(out, metric_name("latency", f"{metric}_{stat}"), dist.get(stat))

    energy = summary.get("energy") or {}
    if energy.get("source") != "estimated":  # estimates beside measured energy, reported apart
        _put(out, "energy/estimated_j_per_output_token", energy.get("estimated_j_per_output_token"))
    for phase, ph in (summary.get("phases") or {}).items():
        if not isinstance(ph, Mapping):
            continue
        _put(out, metric_name("time", "phase", f"{phase}_s"), ph.get("wall_s"))
        _put(out, metric_name("energy", "phase", f"{phase}_j"), ph.get("energy_j"))
        _put(out, metric_name("energy", "phase", f"{phase}_partial_j"), ph.get("partial_energy_j"))
        if phase not in _NO_NET_PHASES:
            _put(out, metric_name("energy", "phase", f"{phase}_net_j"), ph.get("net_energy_j"))
        if ph.get("energy_source") != "estimated":
            _put(out, metric_name("energy", "phase", f"{phase}_estimated_j"), ph.get("estimated_energy_j"))

    stats = (summary.get("cycles") or {}).get("stats") or {}
    if stats:
        _put(out, "cycles/n_cycles", (summary.get("cycles") or {}).get("n_cycles"))
    for metric in _CYCLE_STATS:
        for bound in ("ci95_low", "ci95_high"):
            _put(out, metric_name("cycles", f"{metric}_{bound}"), (stats.get(metric) or {}).get(bound))

    pause = (summary.get("study") or {}).get("pause") or {}  # the pause before this run of a study: in no measured phase
    _put(out, "study/gap_slept_s", pause.get("slept_s"))
    _put(out, "study/idle_wait_s", (pause.get("idle_gate") or {}).get("waited_s"))

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
                    if key == "net_energy_j" and ph.get("name") in _NO_NET_PHASES:
                        continue
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
