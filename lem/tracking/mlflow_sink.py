"""Log one finished run directory to MLflow: params, metrics, tags, artifacts, plots.

The run directory is the only input (raw records, ``summary.json``, the config Hydra
saved), so a run is logged the same way live, from the Hydra callback, or later, by
``python -m lem.sync``. The pure parts — :func:`config_params`, :func:`summary_metrics`,
:func:`run_tags`, :func:`run_name`, :func:`run_key` — need no MLflow.

Metric names carry their kind and unit: ``energy/j_per_output_token``,
``latency/ttft_ms_p50``, ``throughput/output_tokens_per_s``, ``flops/flops_per_output_token``,
``memory/peak_rss_bytes``, per phase ``energy/phase/generation_j`` and per device
``energy/device/cuda_0/generation_j``. A figure nothing measured (null) is not logged:
MLflow would have to show it as 0 or NaN, and lem never reports "not measured" as a number.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from lem.tracking.store import Target, connect, git_commit

ERROR_FILE = "error.txt"  # the traceback of a run that raised, kept in the run directory
LOGGED_TAG = "lem.logging"  # "complete" once every param, metric and artifact is in
RUN_KEY_TAG = "lem.run_key"
SWEEP_ID_TAG = "lem.sweep_id"
PARENT_TAG = "mlflow.parentRunId"
LATENCY_STATS = ("mean", "p50", "p90", "p99", "max")
# Sections of summary.json whose numeric leaves become metrics ``<section>/<key>``.
_SECTIONS = ("throughput", "tokens", "energy", "flops", "memory", "batching")
_SKIP_KEYS = {"per_process", "by_component", "components", "source", "finish_reasons", "batch_size_histogram"}
_STATUS = {"completed": "FINISHED", "incomplete": "KILLED"}


# --- reading a run directory ------------------------------------------------------------------


@dataclass
class RunFolder:
    """What a run directory holds, read tolerantly (a killed or refused run has parts missing)."""

    path: Path
    summary: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)
    processes: list[Any] = field(default_factory=list)  # lem.results.reader.RawProcessRecords
    error_text: str | None = None
    job_num: int | None = None

    @property
    def has_results(self) -> bool:
        return self.summary is not None or bool(self.processes)


def is_run_dir(path: Path) -> bool:
    """A lem result folder: raw records or a summary, or the traceback and config of a run that failed early."""
    if (path / "raw").is_dir() or (path / "summary.json").is_file():
        return True
    return (path / ERROR_FILE).is_file() and ((path / "resolved_config.yaml").is_file() or (path / ".hydra").is_dir())


def read_run_folder(path: str | os.PathLike[str], config: Mapping[str, Any] | None = None) -> RunFolder:
    from lem.results.reader import read_run
    from lem.results.summarize import SUMMARY_FILE, compute_summary, load_config

    folder = RunFolder(path=Path(path).resolve())
    p = folder.path
    try:
        folder.config = dict(config) if config is not None else load_config(p)
    except Exception:  # noqa: BLE001 - an unreadable config must not stop the rest
        folder.config = None
    if folder.config is not None:
        folder.config.pop("hydra", None)
    if (p / "raw").is_dir():
        try:
            folder.processes = read_run(p)
        except Exception:  # noqa: BLE001 - e.g. killed before the header: nothing to read
            folder.processes = []
    summary_file = p / SUMMARY_FILE
    if summary_file.is_file():
        try:
            folder.summary = json.loads(summary_file.read_text())
        except (OSError, ValueError):
            folder.summary = None
    if folder.summary is None and folder.processes:
        try:
            folder.summary = compute_summary(p, folder.config)  # late aggregation; nothing written
        except Exception:  # noqa: BLE001
            folder.summary = None
    folder.overrides = _read_overrides(p)
    if (p / ERROR_FILE).is_file():
        folder.error_text = (p / ERROR_FILE).read_text(errors="replace")
    folder.job_num = _hydra_job_num(p)
    return folder


def _read_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def _hydra_job_num(run_dir: Path) -> int | None:
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
        if data.get("hydra", {}).get("mode") != "MULTIRUN":
            return None
        num = data["hydra"]["job"].get("num")
        return int(num) if isinstance(num, int) or (isinstance(num, str) and num.isdigit()) else None
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None


def run_key(folder: RunFolder) -> str:
    """A run's identity in the store: a hash of its raw header lines (stable when the folder is
    copied or moved; unique per run, since a header holds the start time, host and pid), else
    of its path."""
    h = hashlib.sha256()
    raw = folder.path / "raw"
    files = sorted(raw.glob("process-*.jsonl")) if raw.is_dir() else []
    for f in files:
        with open(f, "rb") as fh:
            h.update(fh.readline())
    if not files:
        h.update(b"path:" + str(folder.path).encode())
    return h.hexdigest()[:32]


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


def _num(v: Any) -> float | None:
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
        elif (x := _num(v)) is not None:
            out[metric_name(*prefix, str(k))] = x


def summary_metrics(summary: Mapping[str, Any] | None, processes: Iterable[Any] = ()) -> dict[str, float]:
    """Every number of the summary (and per-device figures from the raw records), named by kind with units."""
    out: dict[str, float] = {}
    if not summary:
        return out
    processes = list(processes)
    if (n := _num(summary.get("n_requests"))) is not None:
        out["run/n_requests"] = n
    out["run/n_warnings"] = float(len(summary.get("warnings") or []))
    for section in _SECTIONS:
        _leaves(summary.get(section), (section,), out)

    for metric, dist in (summary.get("latency") or {}).items():  # ttft_ms → latency/ttft_ms_p50
        if isinstance(dist, Mapping):
            for stat in LATENCY_STATS:
                if (x := _num(dist.get(stat))) is not None:
                    out[metric_name("latency", f"{metric}_{stat}")] = x

    energy = summary.get("energy") or {}
    for group in energy.get("by_component") or []:  # generation energy by component
        suffix = "" if group.get("source") != "estimated" else "_estimated"
        comp = str(group.get("component"))
        if (x := _num(group.get("energy_j"))) is not None:
            out[metric_name("energy", "component", f"{comp}{suffix}_j")] = x
        if (x := _num(group.get("j_per_output_token"))) is not None:
            out[metric_name("energy", "component", f"{comp}{suffix}_j_per_output_token")] = x

    for phase, ph in (summary.get("phases") or {}).items():
        if not isinstance(ph, Mapping):
            continue
        if (x := _num(ph.get("wall_s"))) is not None:
            out[metric_name("time", "phase", f"{phase}_s")] = x
        for key in ("energy_j", "measured_energy_j", "estimated_energy_j", "net_energy_j"):
            if (x := _num(ph.get(key))) is not None:
                name = "" if key == "energy_j" else key[: -len("_energy_j")] + "_"
                out[metric_name("energy", "phase", f"{phase}_{name}j")] = x
        for group in ph.get("energy_by_component") or []:
            suffix = "" if group.get("source") != "estimated" else "_estimated"
            if (x := _num(group.get("energy_j"))) is not None:
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
                    if (x := _num(r.get(key))) is not None:
                        sums[metric_name("energy", "device", dev, f"{ph.get('name')}_{suffix}")] += x
    out.update(sums)

    for p in processes:
        gen = [ph for ph in p.phases if ph.get("name") == "generation"]
        if not gen:
            continue
        start, end = float(gen[0]["start_s"]), float(gen[-1]["end_s"])
        for dev, cols in _power_columns(p).items():
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
                values = [v for i in idx if i < len(column) and (v := _num(column[i])) is not None]
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
                if (x := _num(v)) is not None:
                    dev = f"{host}/cuda:{j}" if multi_host else f"cuda:{j}"  # cleaned as the energy metrics' labels are
                    peaks[(dev, short)] = max(peaks.get((dev, short), 0.0), x)
    for (dev, short), x in peaks.items():
        if x > 0 or peaks.get((dev, "peak_reserved_bytes"), 0.0) > 0:
            out[metric_name("memory", "device", dev, short)] = x


# --- the power/utilisation timeline ------------------------------------------------------------

TIMELINE_COLUMNS = (
    "process_index", "device", "component", "source", "t_s", "power_w", "energy_j",
    "sm_util_pct", "mem_util_pct", "sm_clock_mhz", "mem_clock_mhz", "temp_c", "throttle_reasons",
)


def _power_columns(proc: Any) -> dict[str, dict[str, list[Any]]]:
    """A process's ``power_samples`` records, concatenated per device (they arrive in chunks)."""
    by_dev: dict[str, dict[str, list[Any]]] = {}
    for rec in proc.other:
        if rec.get("kind") != "power_samples":
            continue
        t = rec.get("t_s") or []
        cols = by_dev.setdefault(str(rec.get("device")), {"component": [rec.get("component")], "source": [rec.get("source")]})
        for col in TIMELINE_COLUMNS[4:]:  # t_s onwards: one value per sample
            values = rec.get(col)
            cols.setdefault(col, []).extend(values if isinstance(values, list) else [None] * len(t))
    return by_dev


def timeline_rows(processes: list[Any]) -> list[dict[str, Any]]:
    """Every power sample as a row on the run's clock (seconds since the earliest process t0)."""
    if not processes:
        return []
    t_ref = min(float(p.header.get("t0_unix_s", 0.0)) for p in processes)
    rows = []
    for p in processes:
        offset = float(p.header.get("t0_unix_s", 0.0)) - t_ref
        for dev, cols in _power_columns(p).items():
            for i, t in enumerate(cols.get("t_s", [])):
                if t is None:
                    continue
                row = {"process_index": p.process_index, "device": dev, "component": cols["component"][0],
                       "source": cols["source"][0], "t_s": float(t) + offset}
                for col in TIMELINE_COLUMNS[5:]:
                    row[col] = cols[col][i] if i < len(cols[col]) else None
                rows.append(row)
    rows.sort(key=lambda r: (r["t_s"], r["process_index"], r["device"]))
    return rows


def phase_spans(processes: list[Any]) -> list[tuple[str, float, float]]:
    """(phase, start, end) on the run's clock, one span per phase over all processes."""
    if not processes:
        return []
    t_ref = min(float(p.header.get("t0_unix_s", 0.0)) for p in processes)
    spans: dict[str, list[float]] = {}
    for p in processes:
        offset = float(p.header.get("t0_unix_s", 0.0)) - t_ref
        for ph in p.phases:
            s, e = float(ph["start_s"]) + offset, float(ph["end_s"]) + offset
            cur = spans.setdefault(str(ph.get("name")), [s, e])
            cur[0], cur[1] = min(cur[0], s), max(cur[1], e)
        for rec in p.other:  # the idle baseline, measured before the engine starts
            if rec.get("kind") == "idle_baseline" and rec.get("start_s") is not None and rec.get("end_s") is not None:
                spans.setdefault("idle_baseline", [float(rec["start_s"]) + offset, float(rec["end_s"]) + offset])
    return sorted(((n, s, e) for n, (s, e) in spans.items()), key=lambda x: x[1])


def write_timeline_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(TIMELINE_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in TIMELINE_COLUMNS})


def read_timeline_csv(path: Path) -> list[dict[str, Any]]:
    """A timeline CSV written by lem or by hand: needs a time column (t_s/time_s) and power_w."""
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            t = raw.get("t_s") or raw.get("time_s") or raw.get("elapsed_s")
            p = raw.get("power_w")
            try:
                row: dict[str, Any] = {"t_s": float(t), "power_w": float(p) if p not in (None, "") else None}
            except (TypeError, ValueError):
                continue
            row["device"] = raw.get("device") or raw.get("component") or "power"
            row["source"] = raw.get("source") or None
            rows.append(row)
    return rows


# --- names and tags ------------------------------------------------------------------------------


def _cfg(config: Mapping[str, Any] | None, dotted: str) -> Any:
    node: Any = config or {}
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    if isinstance(node, Enum):
        return param_value(node)
    return node


def model_short_name(name_or_path: Any) -> str:
    """``meta-llama/Llama-3.1-8B`` → ``Llama-3.1-8B``; ``embedded:smollm2-135m-instruct`` → ``smollm2-135m-instruct``."""
    text = str(name_or_path or "").rstrip("/\\")
    return re.split(r"[/\\:]", text)[-1] if text else ""


# Engines that schedule requests themselves: lem's batching strategy and batch size are not theirs.
SCHEDULING_OF_BACKEND = {"vllm": "continuous", "tensorrt": "continuous", "llama_cpp": "serial"}


def run_name(config: Mapping[str, Any] | None, summary: Mapping[str, Any] | None = None, job_num: int | None = None) -> str:
    """What the run is, at a glance: ``pytorch-static-bs8 Llama-3.1-8B``,
    ``pytorch-sorted_dynamic-tok4096-bfloat16 smollm2-135m-instruct #3`` (``#`` = the sweep's job number)."""
    run = (summary or {}).get("run") or {}
    backend = str(_cfg(config, "backend.name") or run.get("engine") or "run")
    parts = [backend]
    strategy = _cfg(config, "batching.strategy")
    if backend in SCHEDULING_OF_BACKEND:
        parts.append(SCHEDULING_OF_BACKEND[backend])  # lem's batching does not apply: say how requests were served
    elif strategy:
        parts.append(str(strategy))
        if strategy in ("dynamic", "sorted_dynamic") and _cfg(config, "batching.max_tokens_per_batch"):
            parts.append(f"tok{_cfg(config, 'batching.max_tokens_per_batch')}")
        elif _cfg(config, "batching.batch_size") is not None:
            parts.append(f"bs{_cfg(config, 'batching.batch_size')}")
    dtype, quant = _cfg(config, "precision.dtype"), _cfg(config, "precision.quantization")
    if dtype not in (None, "auto"):
        parts.append(str(dtype))
    if quant not in (None, "none"):
        parts.append(str(quant))
    arrival = _cfg(config, "traffic.arrival")
    if arrival not in (None, "offline"):
        parts.append(f"{arrival}{_cfg(config, 'traffic.target_qps')}qps")
    name = "-".join(parts)
    model = model_short_name(_cfg(config, "model.name_or_path") or run.get("model"))
    if model:
        name = f"{name} {model}"
    return f"{name} #{job_num}" if job_num is not None else name


def run_tags(folder: RunFolder, *, sweep_id: str | None = None, job_num: int | None = None, live: bool = True) -> dict[str, str]:
    """Backend, model, devices, versions, git commit, overrides, sweep id — all strings."""
    import lem

    config, summary = folder.config or {}, folder.summary or {}
    run = summary.get("run") or {}
    tags: dict[str, str] = {
        "lem.backend": str(_cfg(config, "backend.name") or run.get("engine") or ""),
        "lem.model": str(run.get("model") or _cfg(config, "model.name_or_path") or ""),
        "lem.version": str(run.get("lem_version") or lem.__version__),
        "lem.overrides": " ".join(folder.overrides),
        "lem.run_dir": str(folder.path),
        RUN_KEY_TAG: run_key(folder),
        "mlflow.user": _user(),
        "mlflow.source.name": "python -m lem" if live else "python -m lem.sync",
        "mlflow.source.type": "LOCAL",
    }
    optional = {
        "lem.device_type": run.get("device_type"),
        "lem.devices": ", ".join(run.get("device_names") or []) or None,
        "lem.hostnames": ", ".join(run.get("hostnames") or []) or None,
        "lem.engine_version": run.get("engine_version"),
        "lem.dtype": run.get("dtype"),
        "lem.status": summary.get("status"),
        "lem.energy_source": (summary.get("energy") or {}).get("source") or ("none" if summary else None),
        "lem.flops_source": (summary.get("flops") or {}).get("source"),
        SWEEP_ID_TAG: sweep_id,
        "lem.job_num": job_num if job_num is not None else folder.job_num,
    }
    tags.update({k: str(v) for k, v in optional.items() if v is not None and v != ""})
    if live:  # a later sync cannot know which commit produced the run
        commit = git_commit()
        if commit:
            tags["lem.git_commit"] = tags["mlflow.source.git.commit"] = commit[0]
            tags["lem.git_dirty"] = "true" if commit[1] else "false"
    note = _description(folder)
    if note:
        tags["mlflow.note.content"] = note
    return {k: v[:8000] for k, v in tags.items()}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def _description(folder: RunFolder) -> str:
    """The run page's description: how to reproduce it, its warnings, its error."""
    lines = []
    if folder.overrides:
        lines.append("`python -m lem " + " ".join(folder.overrides) + "`\n")
    warnings = (folder.summary or {}).get("warnings") or []
    if warnings:
        lines.append("**Warnings**\n")
        lines += [f"- {w}" for w in warnings]
    if folder.error_text:
        last = folder.error_text.strip().splitlines()[-1] if folder.error_text.strip() else ""
        lines.append(f"\n**Failed**: `{last}` (traceback in {ERROR_FILE})")
    return "\n".join(lines)


def run_status(folder: RunFolder) -> str:
    if folder.error_text:
        return "FAILED"
    status = (folder.summary or {}).get("status")
    return _STATUS.get(str(status), "KILLED")


# --- logging -------------------------------------------------------------------------------------


def find_logged_run(client: Any, experiment_id: str, key: str) -> Any | None:
    """The run already logged from this run directory (by run key), if any."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=5)
    complete = [r for r in runs if r.data.tags.get(LOGGED_TAG) == "complete"]
    return complete[0] if complete else (runs[0] if runs else None)


def log_run_dir(
    run_dir: str | os.PathLike[str] | RunFolder,
    target: Target,
    *,
    parent_run_id: str | None = None,
    sweep_id: str | None = None,
    job_num: int | None = None,
    error_text: str | None = None,
    config: Mapping[str, Any] | None = None,
    live: bool = True,
    skip_if_logged: bool = False,
    overrides: list[str] | None = None,
) -> tuple[str, bool]:
    """Log one run directory as one MLflow run; return ``(run_id, newly_logged)``.

    ``error_text`` (a traceback) marks the run FAILED. With ``skip_if_logged``, a run whose
    run key is already in the experiment is left alone, and a half-logged one (its logging
    was interrupted) is replaced.
    """
    from mlflow.entities import Metric, Param, RunTag

    folder = run_dir if isinstance(run_dir, RunFolder) else read_run_folder(run_dir, config)
    if error_text:
        folder.error_text = error_text
    if overrides is not None and not folder.overrides:  # e.g. a job refused before Hydra's .hydra/ was kept
        folder.overrides = list(overrides)
    client, experiment_id = connect(target)
    key = run_key(folder)
    if skip_if_logged:
        existing = find_logged_run(client, experiment_id, key)
        if existing is not None:
            if existing.data.tags.get(LOGGED_TAG) == "complete":
                return existing.info.run_id, False
            client.delete_run(existing.info.run_id)

    num = job_num if job_num is not None else folder.job_num
    tags = run_tags(folder, sweep_id=sweep_id, job_num=num, live=live)
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    started = _num(((folder.summary or {}).get("run") or {}).get("started_unix_s"))
    start_ms = int((started or _mtime(folder.path)) * 1000)
    run = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=run_name(folder.config, folder.summary, num))
    run_id = run.info.run_id

    now_ms = int(time.time() * 1000)
    params = [Param(k, v) for k, v in config_params(folder.config).items()]
    metrics = [Metric(k, v, now_ms, 0) for k, v in sorted(summary_metrics(folder.summary, folder.processes).items())]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])

    _log_artifacts(client, run_id, folder)
    status = run_status(folder)
    client.log_batch(run_id, tags=[RunTag(LOGGED_TAG, "complete")])
    end_ms = _end_ms(folder, start_ms)
    client.set_terminated(run_id, status=status, end_time=max(end_ms, start_ms))
    return run_id, True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _end_ms(folder: RunFolder, start_ms: int) -> int:
    ends = []
    for p in folder.processes:
        t0 = _num(p.header.get("t0_unix_s"))
        if t0 is not None and p.end is not None and _num(p.end.get("end_s")) is not None:
            ends.append(t0 + float(p.end["end_s"]))
    return int(max(ends) * 1000) if ends else max(start_ms, int(time.time() * 1000))


def _log_artifacts(client: Any, run_id: str, folder: RunFolder) -> None:
    from lem.tracking import plots

    p = folder.path
    for name in ("summary.json", "resolved_config.yaml"):
        if (p / name).is_file():
            client.log_artifact(run_id, str(p / name))
    if (p / "raw").is_dir():
        client.log_artifacts(run_id, str(p / "raw"), "raw")
    hydra_dir = p / ".hydra"
    if hydra_dir.is_dir():
        client.log_artifacts(run_id, str(hydra_dir), "hydra")
        if (hydra_dir / "overrides.yaml").is_file():
            client.log_artifact(run_id, str(hydra_dir / "overrides.yaml"))
    for log in sorted(p.glob("*.log")):
        if log.stat().st_size:  # Hydra leaves an empty __main__.log behind when lem logs nothing
            client.log_artifact(run_id, str(log), "logs")
    timeline_csvs = sorted({*p.glob("timeline*.csv"), *p.glob("*/timeline*.csv")})
    for f in timeline_csvs:
        client.log_artifact(run_id, str(f))

    with tempfile.TemporaryDirectory(prefix="lem-mlflow-") as tmp:
        staged = Path(tmp)
        rows = timeline_rows(folder.processes)
        if rows and not any(f.name == "timeline.csv" for f in timeline_csvs):
            write_timeline_csv(rows, staged / "timeline.csv")
            client.log_artifact(run_id, str(staged / "timeline.csv"))
        if not rows and timeline_csvs:
            rows = read_timeline_csv(timeline_csvs[0])
        if folder.error_text:
            (staged / ERROR_FILE).write_text(folder.error_text)
            client.log_artifact(run_id, str(staged / ERROR_FILE))
        plot_dir = staged / "plots"
        plot_dir.mkdir()
        if rows:
            plots.power_timeline(rows, phase_spans(folder.processes), plot_dir / "power_timeline.png", title=run_name(folder.config))
        if folder.summary:
            plots.energy_by_phase(folder.summary, plot_dir / "energy_by_phase.png", title=run_name(folder.config))
        if any(plot_dir.iterdir()):
            client.log_artifacts(run_id, str(plot_dir), "plots")
