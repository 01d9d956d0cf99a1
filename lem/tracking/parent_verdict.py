"""The verdict in a sweep's MLflow parent run, for a Hydra multirun (:mod:`lem.tracking.sweep`) and an
Optuna study (:mod:`lem.search.report`) alike: the best job's headline metrics under the children's
own names, ``lem.best_*`` tags, the verdict as the run's description, and ``sweep/report.html``.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# A child logged before lem's current names (an older store, or synced from older folders) has these.
OLD_NAMES = {
    "energy/phase/generation_j": "energy/generation_energy_j",
    "headline/j_per_output_token": "energy/j_per_output_token",
    "headline/net_j_per_output_token": "energy/net_j_per_output_token",
    "headline/output_tokens_per_s": "throughput/output_tokens_per_s",
    "headline/ttft_ms_p50": "latency/ttft_ms_p50",
    "headline/ttft_ms_p99": "latency/ttft_ms_p99",
    "headline/tpot_ms_p50": "latency/tpot_ms_p50",
}
J_METRIC, NET_J_METRIC = "headline/j_per_output_token", "headline/net_j_per_output_token"
TPS_METRIC, TTFT_P99_METRIC = "headline/output_tokens_per_s", "headline/ttft_ms_p99"


def verdict_row(row: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """A child's row as a verdict row (:mod:`lem.report.verdict`)."""
    num = row.get("job_num")
    return {
        "num": num, "label": f"#{num}" if num is not None else str(row.get("run_name")),
        "swept": {k: row["swept"].get(k, "—") for k in keys},
        "status": "completed" if row.get("status") == "FINISHED" else "failed", "duplicate_of": None,
        "j_per_token": row.get(J_METRIC), "net_j_per_token": row.get(NET_J_METRIC),
        "tokens_per_s": row.get(TPS_METRIC), "ttft_p99_ms": row.get(TTFT_P99_METRIC),
        "energy_source": row.get("energy_source"), "n_cycles": row.get("n_cycles"),
        "run_id": row.get("run_id"), "run_dir": row.get("run_dir"),
    }


def log_sweep_verdict(client: Any, parent_run_id: str, rows: Sequence[Mapping[str, Any]], *, best: Mapping[str, Any] | None,
                      headline: Mapping[str, float], command: str, title: str, what: str = "job", why: str = "least J/token",
                      notes: Sequence[str] = (), pareto_png: bytes | None = None, heatmap_png: bytes | None = None) -> None:
    """The parent's verdict: the best job's headline metrics and tags, the description, ``sweep/report.html``.

    ``rows``: verdict rows; ``headline``: the best job's metrics under their MLflow names.
    """
    from mlflow.entities import Metric, RunTag

    from lem.report.verdict import best_line, render_verdict
    from lem.tracking.html_report import sweep_report_html

    now = int(time.time() * 1000)
    metrics = [Metric(name, float(v), now, 0) for name, v in headline.items() if v is not None and math.isfinite(v)]
    table = render_verdict(rows, title=title, best=best, what=what, why=why)
    if len(table) > 6000:  # MLflow keeps 8000 characters of a tag
        table = table[:5990] + "\n  …"
    note = (f"**{best_line(best, what=what, why=why)}**\n\n```\n{table}\n```\n\n{command}\n\n"
            "Artifacts: `sweep/report.html` (the jobs, sortable, with the plots), `sweep/children.csv`, `plots/`.")
    tags = [RunTag("mlflow.note.content", note[:8000])]
    if best is not None:
        tags += [RunTag("lem.best_run_id", str(best.get("run_id") or "")), RunTag("lem.best_job_num", str(best.get("num")))]
        tags += [RunTag(f"lem.best.{k}"[:250], str(v)[:5000]) for k, v in (best.get("swept") or {}).items()]
        if best.get("energy_source"):  # the parent's J/token is the best job's: so is its source (the runs view's column)
            tags.append(RunTag("lem.energy_source", str(best["energy_source"])))
    client.log_batch(parent_run_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory(prefix="lem-report-") as tmp:
        path = Path(tmp) / "report.html"
        path.write_text(sweep_report_html(rows, title=title, best=best, what=what, why=why, notes=notes,
                                          pareto_png=pareto_png, heatmap_png=heatmap_png), encoding="utf-8")
        client.log_artifact(parent_run_id, str(path), "sweep")
