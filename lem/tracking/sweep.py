"""A Hydra multirun in MLflow: one parent run per sweep, each job a child run under it.

The parent means what it says. Its params describe the sweep: each swept key with its value list
(``batching.batch_size = 1,2,4``) and the fixed overrides, not the base config's defaults (each
child holds its full config). Its metrics are the headline metrics of ONE job, the best (least
J/token among the finished jobs), under the children's own names (``headline/j_per_output_token``),
with tags ``lem.best_run_id``, ``lem.best_job_num`` and ``lem.best.<swept key>``, plus the counts
``sweep/n_jobs``, ``sweep/n_finished``, ``sweep/n_failed``. Its description is the verdict
(:mod:`lem.report.verdict`); its artifacts: ``sweep/report.html`` (a sortable table with the plots
inline), ``sweep/children.csv``, and ``plots/``: J/token against output tokens/s with the Pareto
front, and a heatmap when exactly two parameters were swept. An Optuna study's parent gets its
verdict from the study (``lem.search.report``), which knows which trials were feasible.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.tracking.metrics import HEADLINE_METRICS
from lem.tracking.mlflow_sink import PARENT_TAG, SWEEP_ID_TAG, user_name
from lem.tracking.parent_verdict import OLD_NAMES, log_sweep_verdict, verdict_row
from lem.tracking.store import (
    SWEEP_FILE,
    Target,
    connect,
    git_commit,
    pid_alive,
    search_all_runs,
)

KIND_TAG = "lem.kind"
OWNER_PID_TAG = "lem.owner_pid"  # the process that runs the sweep, and its host: a parent left RUNNING by a
OWNER_HOST_TAG = "lem.owner_host"  # process that no longer exists was killed, and is closed by sync or a resume
HEADLINE = (
    *HEADLINE_METRICS,
    "throughput/total_tokens_per_s",
    "throughput/requests_per_s",
    "latency/e2e_ms_p90",
    "energy/mean_power_w",
    "energy/phase/generation_j",
    "flops/useful_flops_per_output_token",
    "memory/peak_rss_bytes",
)
STUDY_NAME_TAG = "lem.optuna.study_name"  # on a study's parent: the study logs its own verdict


_SWEEP_FUNCS = ("range(", "choice(", "glob(", "interval(", "tag(", "sort(", "shuffle(")


def is_sweep_override(override: str) -> bool:
    """``a=1,2`` or ``a=range(1,4)`` sweeps; ``a=[1,2]`` and ``a='x,y'`` are single values."""
    if "=" not in override:
        return False
    value = override.split("=", 1)[1].strip()
    if value.startswith(_SWEEP_FUNCS):
        return True
    depth, quote = 0, ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def sweep_run_name(overrides: Sequence[str]) -> str:
    """``sweep batching.batch_size=1,8,64 backend=pytorch,vllm``: the swept overrides say what the sweep is."""
    swept = [o for o in overrides if is_sweep_override(o)]
    text = " ".join(swept or overrides)
    if len(text) > 120:
        text = text[:119] + "…"
    return f"sweep {text}" if text else "sweep"


def create_parent(
    target: Target,
    *,
    sweep_id: str,
    overrides: Sequence[str],
    config: Mapping[str, Any] | None = None,
    sweep_dir: Path | None,
    live: bool = True,
    start_time_ms: int | None = None,
) -> str:
    """Start the sweep's parent run (status RUNNING until :func:`finalize_parent`).

    Its params are the command line's overrides (:func:`sweep_params`); ``config`` (the base
    config) is not logged: its defaults are not what the sweep varied, and each child holds its own.
    """
    from mlflow.entities import Param

    client, experiment_id = connect(target)
    tags = {
        KIND_TAG: "sweep",
        SWEEP_ID_TAG: sweep_id,
        "lem.overrides": " ".join(overrides),
        "mlflow.user": user_name(),
        "mlflow.source.name": "python -m lem -m" if live else "python -m lem sync",
        "mlflow.source.type": "LOCAL",
        "mlflow.note.content": "Hydra multirun: `python -m lem -m " + " ".join(overrides) + "`\n\n"
        "Children: one run per job. Artifacts: `sweep/children.csv`, `plots/`.",
    }
    if sweep_dir is not None:
        tags["lem.sweep_dir"] = str(sweep_dir)
    if live:
        tags[OWNER_PID_TAG], tags[OWNER_HOST_TAG] = str(os.getpid()), socket.gethostname()
    commit = git_commit() if live else None
    if commit:
        tags["lem.git_commit"] = tags["mlflow.source.git.commit"] = commit[0]
    run = client.create_run(experiment_id, start_time=start_time_ms, tags=tags, run_name=sweep_run_name(overrides))
    params = [Param(k, v) for k, v in sweep_params(overrides).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    return run.info.run_id


def sweep_params(overrides: Sequence[str]) -> dict[str, str]:
    """``["batching.batch_size=1,2,4", "backend=pytorch"]`` → ``{"batching.batch_size": "1,2,4", "backend": "pytorch"}``:
    the swept keys with their value lists and the fixed overrides; Hydra's own settings left out."""
    from lem.redact import redact

    out: dict[str, str] = {}
    for override in overrides:
        if "=" not in override:
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+~")
        if key and not key.startswith("hydra."):
            out[key[:250]] = redact(value)[:6000]
    return out


def find_parent(target: Target, sweep_id: str) -> Any | None:
    client, experiment_id = connect(target)
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}' and tags.`{KIND_TAG}` = 'sweep'", max_results=1
    )
    return runs[0] if runs else None


def write_sweep_file(sweep_dir: Path, data: Mapping[str, Any]) -> bool:
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(dict(data), indent=1) + "\n")
        return True
    except OSError:
        return False


def read_sweep_file(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((sweep_dir / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the children's table ------------------------------------------------------------------------


def parse_overrides(text: str) -> dict[str, str]:
    """``"a.b=1 c=x y"`` → ``{"a.b": "1", "c": "x y"}`` (a word without '=' continues the previous value)."""
    out: dict[str, str] = {}
    last = None
    for token in text.split(" "):
        if "=" in token:
            key, value = token.split("=", 1)
            last = key.lstrip("+~")
            out[last] = value
        elif last is not None and token:
            out[last] += " " + token
    return out


SUPERSEDED_TAG = "lem.superseded"  # a study job's earlier attempt, rerun by a resume: not one of the sweep's jobs


def mark_superseded(target: Target, parent_run_id: str, old_dir: Path, new_dir: Path) -> None:
    """Tag the child logged from ``old_dir`` (an attempt moved to ``new_dir`` before its rerun) as superseded."""
    client, experiment_id = connect(target)
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`lem.run_dir` = '{old_dir.resolve()}'"
    for run in client.search_runs([experiment_id], filter_string=query, max_results=10):
        client.set_tag(run.info.run_id, SUPERSEDED_TAG, "true")
        client.set_tag(run.info.run_id, "lem.run_dir", str(new_dir.resolve()))


def reopen_parent(target: Target, parent_run_id: str) -> bool:
    """Continue a resumed study's parent run: RUNNING again, owned by this process. False when it is gone."""
    client, _ = connect(target)
    try:
        run = client.get_run(parent_run_id)
    except Exception:  # noqa: BLE001 - deleted, or another store
        return False
    if run.info.lifecycle_stage != "active":
        return False
    client.update_run(parent_run_id, status="RUNNING")
    client.set_tag(parent_run_id, OWNER_PID_TAG, str(os.getpid()))
    client.set_tag(parent_run_id, OWNER_HOST_TAG, socket.gethostname())
    client.set_tag(parent_run_id, "lem.resumed", "true")
    return True


def children_rows(target: Target, parent_run_id: str) -> list[dict[str, Any]]:
    client, experiment_id = connect(target)
    runs = search_all_runs(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    rows = []
    for r in runs:
        tags = r.data.tags
        if tags.get(SUPERSEDED_TAG) == "true":
            continue
        num = tags.get("lem.job_num")
        row: dict[str, Any] = {
            "job_num": int(num) if num and num.isdigit() else None,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "run_id": r.info.run_id,
            "overrides": tags.get("lem.overrides", ""),
            "swept": parse_overrides(tags.get("lem.overrides", "")),
            "end_time_ms": r.info.end_time,
            "energy_source": tags.get("lem.energy_source"),
        }
        for metric in HEADLINE:
            value = r.data.metrics.get(metric)
            if value is None and metric in OLD_NAMES:  # a child logged before lem's current names
                value = r.data.metrics.get(OLD_NAMES[metric])
            row[metric] = value if value is not None and math.isfinite(value) else None
        cycles = r.data.params.get("cycles", "")
        row["n_cycles"] = int(cycles) if cycles.isdigit() else None
        row["run_dir"] = tags.get("lem.run_dir")
        row["label"] = f"#{row['job_num']}" if row["job_num"] is not None else r.info.run_name
        rows.append(row)
    rows.sort(key=lambda r: (r["job_num"] is None, r["job_num"] or 0, r["run_name"] or ""))
    return rows


def swept_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Override keys whose values differ between jobs, in command-line order."""
    keys: dict[str, set[str]] = {}
    for r in rows:
        for k, v in r["swept"].items():
            keys.setdefault(k, set()).add(v)
    return [k for k, values in keys.items() if len(values) > 1 or any(k not in r["swept"] for r in rows)]


def write_children_csv(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], path: Path) -> None:
    columns = ["job_num", "run_name", "status", *keys, *HEADLINE, "run_id", "overrides"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in rows:
            values = [r.get("job_num"), r.get("run_name"), r.get("status"), *[r["swept"].get(k) for k in keys]]
            values += [r.get(m) for m in HEADLINE] + [r.get("run_id"), r.get("overrides")]
            writer.writerow(["" if v is None else v for v in values])


def owner_state(run: Any) -> str:
    """Whether the process that created a RUNNING parent still runs: "alive", "gone" or "unknown"
    (another host, or a parent made before lem recorded its owner, or by sync)."""
    tags = run.data.tags
    pid, host = tags.get(OWNER_PID_TAG, ""), tags.get(OWNER_HOST_TAG)
    if not pid.isdigit() or host != socket.gethostname():
        return "unknown"
    return "alive" if int(pid) == os.getpid() or pid_alive(int(pid)) else "gone"


def close_if_stale(target: Target, run_id: str) -> bool:
    """Close a sweep parent left RUNNING by a process that was killed (SIGKILL, or SIGTERM before
    lem handled it): KILLED, its table and plots written, its end time its last child's. True when closed."""
    client, _ = connect(target)
    run = client.get_run(run_id)
    if run.info.status != "RUNNING" or owner_state(run) != "gone":
        return False
    finalize_parent(target, run_id, interrupted=True, end_from_children=True, killed=True)
    return True


def set_parent_tag(target: Target, parent_run_id: str, key: str, value: str) -> None:
    client, _ = connect(target)
    client.set_tag(parent_run_id, key, value[:5000])  # MLflow's tag value limit is larger; a line stays readable


def finalize_parent(target: Target, parent_run_id: str, *, interrupted: bool = False, end_from_children: bool = False,
                    killed: bool = False) -> list[dict[str, Any]]:
    """Write the children's table, the verdict and plots into the parent and end it; return the rows.

    ``end_from_children``: the parent ends when its last child did (a sweep logged later by
    ``lem.sync``), not now. ``killed``: its process was killed: KILLED whatever its children did.
    """
    from mlflow.entities import Metric, RunTag

    from lem.report.verdict import best_of
    from lem.tracking import plots

    client, _ = connect(target)
    parent_tags = client.get_run(parent_run_id).data.tags
    rows = children_rows(target, parent_run_id)
    keys = swept_keys(rows)
    verdict = [verdict_row(r, keys) for r in rows]
    for r in rows:  # plot labels say what each point is: "#3 batch_size=16 backend=vllm"
        values = " ".join(f"{k.split('.')[-1]}={r['swept'][k]}" for k in keys if k in r["swept"])
        r["label"] = f"{r['label']} {values}".strip()
    now = int(time.time() * 1000)
    finished = [r for r in rows if r["status"] == "FINISHED"]
    n_failed = sum(r["status"] == "FAILED" for r in rows)
    metrics = [
        Metric("sweep/n_jobs", float(len(rows)), now, 0),
        Metric("sweep/n_finished", float(len(finished)), now, 0),
        Metric("sweep/n_failed", float(n_failed), now, 0),
    ]
    client.log_batch(parent_run_id, metrics=metrics)

    with tempfile.TemporaryDirectory(prefix="lem-sweep-") as tmp:
        staged = Path(tmp)
        write_children_csv(rows, keys, staged / "children.csv")
        client.log_artifact(parent_run_id, str(staged / "children.csv"), "sweep")
        plot_dir = staged / "plots"
        plot_dir.mkdir()
        pareto = plots.sweep_pareto(rows, plot_dir / "pareto_j_per_token_vs_throughput.png") if rows else None
        heatmap = plots.sweep_heatmap(rows, keys[0], keys[1], plot_dir / "heatmap_j_per_token.png") if len(keys) == 2 and rows else None
        if any(plot_dir.iterdir()):
            client.log_artifacts(parent_run_id, str(plot_dir), "plots")
        if STUDY_NAME_TAG not in parent_tags:  # a study logged its own verdict, feasibility included
            best = best_of(verdict)
            child = next((r for r in rows if best is not None and r["run_id"] == best["run_id"]), {})
            log_sweep_verdict(
                client, parent_run_id, verdict, best=best, headline={m: child[m] for m in HEADLINE_METRICS if child.get(m) is not None},
                command="Hydra multirun: `python -m lem -m " + parent_tags.get("lem.overrides", "") + "`",
                title=f"lem sweep {', '.join(keys) or '(nothing swept)'}",
                pareto_png=pareto.read_bytes() if pareto else None, heatmap_png=heatmap.read_bytes() if heatmap else None,
            )

    tags = [RunTag("lem.swept_keys", ",".join(keys)), RunTag("lem.n_failed", str(n_failed))]
    if interrupted:
        tags.append(RunTag("lem.sweep_interrupted", "true"))
    client.log_batch(parent_run_id, tags=tags)
    if killed:
        status = "KILLED"
    elif interrupted:  # the sweep did not reach its end: a job's error stopped Hydra, or Ctrl-C
        status = "FAILED" if n_failed else "KILLED"
    else:
        status = "FAILED" if rows and not finished else "FINISHED"
    ends = [r["end_time_ms"] for r in rows if r.get("end_time_ms")]
    end_ms = max(ends) if end_from_children and ends else None
    if killed and end_ms is None:  # no child ended: it died in its first job; the last sign of life is its start
        end_ms = client.get_run(parent_run_id).info.start_time or now
    client.set_terminated(parent_run_id, status=status, end_time=end_ms)
    return rows
