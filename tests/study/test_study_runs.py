"""Studies that really run (the tiny model on the CPU): spread cycles pooled per configuration, a killed
study continued by ``lem resume`` into the same MLflow parent, a changed study refused, the circuit breaker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lem_cli import lem_env
from tests.tiny_model import make_tiny_model_dir

FAST = ["backend.pytorch.num_threads=1", "energy.idle_baseline_s=0", "flops.strategy=analytical", "report.progress=off",
        "energy.codecarbon.measure_power_secs=0.5"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def lem(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lem", *args], cwd=cwd, env={**lem_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout_s)


def mlflow_runs(uri: str) -> tuple[Any, list[Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("lem")
    runs = list(client.search_runs([exp.experiment_id], max_results=1000))
    parents = [r for r in runs if r.data.tags.get("lem.kind") == "sweep"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return parents[0], [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def the_study(cwd: Path) -> tuple[Path, dict[str, Any]]:
    [path] = list((cwd / "multirun").glob("*/*/study.json"))
    return path.parent, json.loads(path.read_text())


def test_interleaved_cycles_run_as_their_own_jobs_and_pool_per_configuration(tiny_model: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["-m", f"model.name_or_path={tiny_model}", "dataset.n_prompts=2", "dataset.max_output_tokens=3,5", "cycles=2",
            "study.order=interleaved", f"tracking.tracking_uri={uri}", *FAST]
    result = lem(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 configurations declared → 0 refused → 0 duplicates → 2 × 2 cycles = 4 jobs of one cycle each (interleaved)" in result.stderr
    sweep, study = the_study(tmp_path)
    assert [(v["job"], v["point"], v["cycle"], v["status"]) for v in study["visits"]] == [
        (0, 0, 0, "completed"), (1, 1, 0, "completed"), (2, 0, 1, "completed"), (3, 1, 1, "completed")]
    for job in range(4):
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        assert summary["study"]["position"] == job and summary["cycles"] is None  # one cycle per job
    # each configuration's two cycles, from two jobs, pooled with the cycle statistics a job's own cycles get
    pooled = {c["point"]: c for c in study["configs"]}
    assert set(pooled) == {0, 1}
    for point, config in pooled.items():
        assert config["n_cycles"] == 2 and config["jobs"] == [point, point + 2]
        assert [row["job"] for row in config["per_cycle"]] == [point, point + 2]
        assert config["stats"]["output_tokens_per_s"]["ci95_low"] is not None
    assert sum(r["output_tokens"] for r in pooled[1]["per_cycle"]) <= 2 * 2 * 5
    assert "each configuration's cycles, pooled across the study" in result.stderr
    parent, children = mlflow_runs(uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    assert {"sweep/study.json", "sweep/configs.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    table = Path(client.download_artifacts(parent.info.run_id, "sweep/configs.csv", str(tmp_path))).read_text().splitlines()
    assert table[0].startswith("job,overrides,n_cycles,jobs,j_per_output_token_mean") and len(table) == 3
    assert sorted(c.data.tags["lem.study.position"] for c in children) == ["0", "1", "2", "3"]
    assert {c.data.tags["lem.study.cycle"] for c in children} == {"0", "1"}


def test_a_killed_study_is_continued_into_the_same_parent_and_a_changed_one_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["-m", f"model.name_or_path={tiny_model}", "dataset.n_prompts=${oc.env:LEM_TEST_NP}", "dataset.max_output_tokens=2,3,4,5",
            f"tracking.tracking_uri={uri}", *FAST]
    env = {**lem_env(), "LEM_TEST_NP": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "lem", *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "multirun").glob("*/*/2/study_visit.json")):  # jobs 0 and 1 done, job 2 starting
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole study: the sweep process and its engine worker
    proc.wait(timeout=30)
    sweep, study = the_study(tmp_path)
    kept = {job: (sweep / str(job) / "summary.json").stat().st_mtime_ns for job in (0, 1)}
    assert [v["status"] for v in study["visits"]][:2] == ["completed", "completed"]

    # The same command while the settings resolve differently: refused in one line, nothing run.
    changed = lem(args, tmp_path, env={"LEM_TEST_NP": "3"})
    assert changed.returncode == 2
    lines = [line for line in changed.stderr.splitlines() if line.startswith("lem: error:")]
    assert len(lines) == 1 and f"cannot resume the study in {sweep}" in lines[0] and "dataset.n_prompts: 2 → 3" in lines[0], changed.stderr
    assert len(list((tmp_path / "multirun").glob("*/*/study.json"))) == 1

    resumed = lem(["resume", str(sweep)], tmp_path, env={"LEM_TEST_NP": "2"})
    assert resumed.returncode == 0, resumed.stderr
    assert "2 of 4 jobs completed earlier are kept; 2 to run" in resumed.stderr
    _, study = the_study(tmp_path)
    assert [v["status"] for v in study["visits"]] == ["completed"] * 4 and study["status"] == "completed"
    assert {job: (sweep / str(job) / "summary.json").stat().st_mtime_ns for job in (0, 1)} == kept  # not rerun
    assert [v["attempts"] for v in study["visits"]] == [1, 1, 2, 1]
    parent, children = mlflow_runs(uri)
    assert parent.info.status == "FINISHED" and parent.data.tags.get("lem.resumed") == "true"
    live = [c for c in children if c.data.tags.get("lem.superseded") != "true"]
    assert sorted(c.data.tags["lem.job_num"] for c in live) == ["0", "1", "2", "3"]
    assert all(c.info.status == "FINISHED" for c in live)
    assert parent.data.metrics["sweep/n_jobs"] == 4


def test_the_circuit_breaker_stops_the_study_and_the_same_command_finishes_it(tiny_model: Path, tmp_path: Path) -> None:
    args = ["-m", f"model.name_or_path={tiny_model}", "dataset.n_prompts=2", "dataset.max_output_tokens=2,3,4",
            "study.max_consecutive_failures=2", "tracking.enabled=false", *FAST]
    broken = lem(args, tmp_path, env={"LEM_TEST_FAULT": "enospc:0"})  # every job fails writing its records
    assert broken.returncode == 1
    assert "lem: the study stops: 2 runs in a row failed (study.max_consecutive_failures=2); 1 run(s) not started" in broken.stderr
    sweep, study = the_study(tmp_path)
    assert [v["status"] for v in study["visits"]] == ["failed", "failed", "pending"] and study["status"] == "failed"

    fixed = lem(args, tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert "continuing the unfinished study" in fixed.stderr
    _, study = the_study(tmp_path)
    assert [v["status"] for v in study["visits"]] == ["completed"] * 3
    assert sorted(p.name for p in (sweep / ".attempts").iterdir()) == ["0-1", "1-1"]  # the failed attempts, kept aside
    assert [p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir()] == [sweep]  # no second sweep folder
