"""The URLs lem prints open MLflow's runs view (not the GenAI overview) with lem's columns; the
experiment carries the view those URLs name. The browser test (test_mlflow_ui.py) checks the rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lem.tracking.view import (
    RUN_NAME_COLUMN,
    VIEW_TAG,
    apply_experiment_view,
    experiment_tags,
    run_url,
    runs_url,
    ui_base_url,
    view_state,
    where_to_look,
)


def test_the_view_sorts_by_j_per_token_and_shows_the_headline_columns():
    state = view_state()
    assert state["orderByKey"] == "metrics.`headline/j_per_output_token`" and state["orderByAsc"] is True
    assert "metrics.`headline/output_tokens_per_s`" in state["selectedColumns"]
    assert "metrics.`headline/ttft_ms_p99`" in state["selectedColumns"]
    assert "tags.`lem.energy_source`" in state["selectedColumns"]  # estimated or measured, beside the number
    # MLflow applies a width only to a column named in columnOrder: every width has its column there
    assert set(state["columnWidths"]) <= set(state["columnOrder"]) and state["columnOrder"][0] == RUN_NAME_COLUMN
    tags = experiment_tags()
    assert tags["mlflow.experimentKind"] == "custom_model_development" and json.loads(tags[VIEW_TAG]) == state


def test_urls_ask_for_the_model_training_view_and_name_the_shared_view(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LEM_UI_PORT", raising=False)
    base, served = ui_base_url("sqlite:///mlruns/mlflow.db")
    assert (base, served) == ("http://127.0.0.1:5000", False)
    assert runs_url(base, "3") == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=lem"
    assert run_url(base, "3", "ab12") == "http://127.0.0.1:5000/#/experiments/3/runs/ab12?workflowType=machine_learning"
    monkeypatch.setenv("LEM_UI_PORT", "5071")
    assert ui_base_url(None)[0] == "http://127.0.0.1:5071"
    assert ui_base_url("http://user:secret@mlflow.internal:5000/") == ("http://user:***@mlflow.internal:5000", True)  # never its password
    lines = where_to_look("sqlite:///x.db", "3", "ab12")
    assert lines[0] == "mlflow: run http://127.0.0.1:5071/#/experiments/3/runs/ab12?workflowType=machine_learning"
    assert lines[1].startswith("mlflow: all runs by J/token http://127.0.0.1:5071/") and lines[1].endswith("(start the UI with `make ui`)")
    assert where_to_look("http://mlflow.internal:5000", "3") == [
        "mlflow: all runs by J/token http://mlflow.internal:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=lem"]


def test_the_store_gets_the_view_on_creation_and_an_old_experiment_is_healed(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from lem.tracking.store import Target, connect, reset_connections

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = MlflowClient(tracking_uri=uri)
    old.create_experiment("lem", artifact_location=str(tmp_path / "artifacts"))  # made before lem set a view
    reset_connections()
    try:
        client, experiment_id = connect(Target(uri=uri, experiment_name="lem"))
        tags = old.get_experiment(experiment_id).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development" and VIEW_TAG in tags
        apply_experiment_view(client, experiment_id)  # already there: nothing rewritten, nothing raised
    finally:
        reset_connections()
