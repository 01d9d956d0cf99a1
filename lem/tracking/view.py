"""How the MLflow UI opens lem's experiment: on its runs, with the answer in columns.

MLflow 3.x opens an experiment on its GenAI "Overview" page unless the URL asks for the
model-training workflow (``?workflowType=machine_learning``); the runs table shows metric
columns only when a view asks for them. MLflow's own "share view" stores a view as an
experiment tag ``mlflow.sharedViewState.<key>`` (JSON: sort order, selected columns, column
widths) that a URL names with ``viewStateShareKey=<key>``. lem writes that tag itself, so the URL
it prints opens the runs sorted by J/token with J/token, net J/token, tok/s, TTFT p99 and the
energy source as columns, wide enough to read run names whole. Needs no MLflow to build URLs.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from lem.tracking.metrics import HEADLINE_METRICS

VIEW_KEY = "lem"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
DEFAULT_UI_URL = "http://127.0.0.1:5000"  # `make ui` / `python -m lem ui`
# Columns of the runs table, in order (the first sorts, ascending: least energy per token first).
VIEW_METRICS = (
    "headline/j_per_output_token",
    "headline/net_j_per_output_token",
    "headline/output_tokens_per_s",
    "headline/ttft_ms_p99",
    "headline/tpot_ms_p50",
)
VIEW_TAGS = ("lem.energy_source", "lem.backend")
RUN_NAME_COLUMN = "attributes.`Run Name`"  # the runs table's own column id
RUN_NAME_WIDTH_PX = 380
COLUMN_WIDTH_PX = 215  # the whole of `headline/net_j_per_output_token` in the header
EXPERIMENT_DESCRIPTION = (
    "lem: one run per measured job, a sweep's jobs under its parent run. "
    "Sorted by J per output token; `lem.energy_source` says measured or estimated."
)


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"


def view_state() -> dict[str, Any]:
    """The shared view lem's URL opens: sorted by J/token, headline metrics and the energy source as columns."""
    missing = [m for m in VIEW_METRICS if m not in HEADLINE_METRICS]
    assert not missing, f"not headline metrics: {missing}"
    columns = [_column("metrics", m) for m in VIEW_METRICS] + [_column("tags", t) for t in VIEW_TAGS]
    return {
        "orderByKey": columns[0],
        "orderByAsc": True,
        "selectedColumns": columns,
        # MLflow applies widths only to the columns named in columnOrder
        "columnOrder": [RUN_NAME_COLUMN, *columns],
        "columnWidths": {RUN_NAME_COLUMN: RUN_NAME_WIDTH_PX, **{c: COLUMN_WIDTH_PX for c in columns}},
    }


def experiment_tags() -> dict[str, str]:
    """Tags that make the experiment open as lem means it (set on every connect: cheap, and heals old stores)."""
    return {
        "mlflow.experimentKind": "custom_model_development",
        VIEW_TAG: json.dumps(view_state(), separators=(",", ":")),
        "mlflow.note.content": EXPERIMENT_DESCRIPTION,
    }


def apply_experiment_view(client: Any, experiment_id: str) -> None:
    """Write :func:`experiment_tags` where they differ from what the experiment has."""
    current = dict(getattr(client.get_experiment(experiment_id), "tags", {}) or {})
    for key, value in experiment_tags().items():
        if current.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)


def ui_base_url(tracking_uri: str | None) -> tuple[str, bool]:
    """``(base URL, served)``: the tracking server itself, or where ``make ui`` serves a local store."""
    uri = (tracking_uri or "").strip()
    if uri.startswith(("http://", "https://")):
        from lem.redact import redact

        return redact(uri).rstrip("/"), True
    port = os.environ.get("LEM_UI_PORT", "").strip()
    return (f"http://127.0.0.1:{port}" if port.isdigit() else DEFAULT_UI_URL), False


def runs_url(base_url: str, experiment_id: str) -> str:
    """The experiment's runs table in the model-training view, lem's columns and sort order."""
    return f"{base_url}/#/experiments/{quote(str(experiment_id))}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def run_url(base_url: str, experiment_id: str, run_id: str) -> str:
    """One run's page (model-training view)."""
    return f"{base_url}/#/experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}?workflowType=machine_learning"


def where_to_look(tracking_uri: str | None, experiment_id: str, run_id: str | None = None) -> list[str]:
    """The lines lem prints after logging: the run's URL, the runs view's, and how to start the UI."""
    base, served = ui_base_url(tracking_uri)
    lines = [f"mlflow: run {run_url(base, experiment_id, run_id)}"] if run_id else []
    hint = "" if served else " (start the UI with `make ui`)"
    return [*lines, f"mlflow: all runs by J/token {runs_url(base, experiment_id)}{hint}"]
