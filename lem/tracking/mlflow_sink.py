"""Log one finished run directory to MLflow: params, metrics, tags, artifacts, plots.

The run directory is the only input (``lem.tracking.run_folder`` reads it), so a run is logged
the same way live, from the Hydra callback, or later, by ``python -m lem sync``. Its params
and metrics are named by ``lem.tracking.metrics``; its name, tags and status are made here —
:func:`run_tags`, :func:`run_name` and :func:`run_status` need no MLflow.
"""

from __future__ import annotations

import getpass
import os
import re
import tempfile
import time
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from lem.tracking.metrics import (
    config_params,
    finite_number,
    param_value,
    summary_metrics,
    value_at,
)
from lem.tracking.run_folder import (
    ERROR_FILE,
    RunFolder,
    phase_spans,
    read_run_folder,
    read_timeline_csv,
    run_key,
    timeline_rows,
    write_timeline_csv,
)
from lem.tracking.store import Target, connect, git_commit
from lem.tracking.system_metrics import log_system_series

LOGGED_TAG = "lem.logging"  # "complete" once every param, metric and artifact is in
RUN_KEY_TAG = "lem.run_key"
SWEEP_ID_TAG = "lem.sweep_id"
PARENT_TAG = "mlflow.parentRunId"
_STATUS = {"completed": "FINISHED", "incomplete": "KILLED"}


# --- names and tags ------------------------------------------------------------------------------


def _cfg(config: Mapping[str, Any] | None, dotted: str) -> Any:
    node = value_at(config or {}, dotted)
    if isinstance(node, Enum):
        return param_value(node)
    return node


def model_short_name(name_or_path: Any) -> str:
    """``meta-llama/Llama-3.1-8B`` → ``Llama-3.1-8B``; ``embedded:smollm2-135m-instruct`` → ``smollm2-135m-instruct``."""
    text = str(name_or_path or "").rstrip("/\\")
    return re.split(r"[/\\:]", text)[-1] if text else ""


_DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
MAX_RUN_NAME = 60  # the runs table shows this much (lem.tracking.view widens the column for it)
MIN_MODEL_CHARS = 40  # a model name this long is never cut, even where the name then runs past MAX_RUN_NAME


def short_dtype(dtype: Any) -> str:
    """``torch.bfloat16`` / ``bfloat16`` → ``bf16``; anything else as it is spelled."""
    text = str(dtype or "").removeprefix("torch.")
    return _DTYPE_SHORT.get(text, text)


def _fit(model: str, room: int) -> str:
    """The model's name whole where it fits (always, up to :data:`MIN_MODEL_CHARS`), else its start and
    end around ``…``, so the size (``-70B-Instruct``) still shows."""
    room = max(room, MIN_MODEL_CHARS)
    if len(model) <= room:
        return model
    head = (room - 1) // 2
    return f"{model[:head]}…{model[-(room - 1 - head):]}"


def run_name(config: Mapping[str, Any] | None, summary: Mapping[str, Any] | None = None, job_num: int | None = None) -> str:
    """What the run is, at a glance, and what sets it apart from its sweep's other jobs: engine,
    batching, batch size, dtype, then the model — ``pytorch-static-bs8-bf16 Llama-3.1-8B``,
    ``vllm-continuous-bs64-fp16-awq Qwen2.5-7B #3`` (``#`` = the sweep's job number). At most
    :data:`MAX_RUN_NAME` characters where the model's name allows: the engine's part is short, and
    only a model name longer than :data:`MIN_MODEL_CHARS` loses its middle, never its end."""
    run = (summary or {}).get("run") or {}
    backend = str(_cfg(config, "backend.name") or run.get("engine") or "run")
    parts = [backend]
    strategy = _cfg(config, "batching.strategy")
    from lem.backends.registry import scheduling

    served = scheduling(backend)  # the engine class says how it is handed requests ("batch" for a name lem does not know)
    if served == "serial":
        parts.append(served)  # one request at a time: lem's batching does not apply
    elif strategy:
        if strategy == "auto":  # as lem.backends.registry.effective_batching resolves it
            strategy = "continuous" if served == "continuous" else "static"
        parts.append(str(strategy))
        if strategy in ("dynamic", "sorted_dynamic") and _cfg(config, "batching.max_tokens_per_batch"):
            parts.append(f"tok{_cfg(config, 'batching.max_tokens_per_batch')}")
        elif _cfg(config, "batching.batch_size") is not None:
            parts.append(f"bs{_cfg(config, 'batching.batch_size')}")
    dtype, quant = _cfg(config, "precision.dtype"), _cfg(config, "precision.quantization")
    if dtype in (None, "auto"):
        dtype = run.get("dtype")  # what "auto" resolved to, where the run got that far
    if dtype not in (None, "", "auto"):
        parts.append(short_dtype(dtype))
    if quant not in (None, "none"):
        parts.append(str(quant))
    arrival = _cfg(config, "traffic.arrival")
    if arrival not in (None, "offline"):
        parts.append(f"{arrival}{_cfg(config, 'traffic.target_qps')}qps")
    name = "-".join(parts)
    suffix = f" #{job_num}" if job_num is not None else ""
    model = model_short_name(_cfg(config, "model.name_or_path") or run.get("model"))
    if model:
        name = f"{name} {_fit(model, MAX_RUN_NAME - len(name) - len(suffix) - 1)}"
    return name + suffix


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
        "mlflow.user": user_name(),
        "mlflow.source.name": "python -m lem" if live else "python -m lem sync",
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
    study = summary.get("study") or {}
    if study:  # where the run stood in its study (lem.study): its configuration, which of its cycles, when
        optional.update({"lem.study.point": study.get("point"), "lem.study.cycle": study.get("cycle"),
                         "lem.study.position": study.get("position"), "lem.study.order": study.get("order")})
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


def user_name() -> str:
    """Who ran it, for MLflow's user column ("unknown" in a container without a user name)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def _description(folder: RunFolder) -> str:
    """The run page's description: the headline line, how to reproduce it, its warnings, its error."""
    lines = []
    if folder.summary:
        from lem.report.headline import headline_line

        lines.append(headline_line(folder.summary) + "\n")
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
    started = finite_number(((folder.summary or {}).get("run") or {}).get("started_unix_s"))
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
    log_system_series(client, run_id, folder.processes)  # the power timeline, charted under "System metrics"

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
        t0 = finite_number(p.header.get("t0_unix_s"))
        if t0 is not None and p.end is not None and finite_number(p.end.get("end_s")) is not None:
            ends.append(t0 + float(p.end["end_s"]))
    return int(max(ends) * 1000) if ends else max(start_ms, int(time.time() * 1000))


def _log_artifacts(client: Any, run_id: str, folder: RunFolder) -> None:
    from lem.tracking import plots

    p = folder.path
    for name in ("summary.json", "request_energy.jsonl", "resolved_config.yaml"):
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
            plots.power_timeline(rows, phase_spans(folder.processes), plot_dir / "power_timeline.png", title=run_name(folder.config, folder.summary))
        if folder.summary:
            plots.energy_by_phase(folder.summary, plot_dir / "energy_by_phase.png", title=run_name(folder.config, folder.summary))
        if any(plot_dir.iterdir()):
            client.log_artifacts(run_id, str(plot_dir), "plots")
