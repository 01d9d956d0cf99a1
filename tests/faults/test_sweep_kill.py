"""A tracked sweep killed mid-job, for real: SIGTERM closes its MLflow parent at once; after SIGKILL
(nothing can run), ``lem sync`` closes the stale parent as KILLED and logs the job that was cut short.

Each case starts ``python -m lem -m`` on the tiny model with an SQLite store, waits until job 0 has
written request records, signals the sweep's process, and checks what a user would find: no
engine worker left, the job's raw records kept, no parent left RUNNING.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.test_run_faults import (
    FAST,
    LONG,
    assert_gone,
    start,
    wait_for_requests,
)
from tests.tiny_model import make_tiny_model_dir
from tests.tracking.test_tracking import all_runs, client_for, lem_env, sqlite_uri

TRACKED = [a for a in FAST if a != "tracking.enabled=false"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def _killed_sweep(tiny_model: Path, tmp_path: Path, signum: int) -> tuple[Path, str, subprocess.Popen[str]]:
    sweep, uri = tmp_path / "sweep", sqlite_uri(tmp_path / "store" / "mlflow.db")
    proc = start(["-m", f"model.name_or_path={tiny_model}", f"hydra.sweep.dir={sweep}", f"tracking.tracking_uri={uri}",
                  "run.seed=1,2", *TRACKED, *LONG], tmp_path)
    worker = wait_for_requests(sweep / "0" / "raw" / "process-0.jsonl", proc)
    proc.send_signal(signum)
    proc.communicate(timeout=90)
    assert_gone(worker)  # SIGKILL included: the worker dies with its parent (PR_SET_PDEATHSIG)
    assert (sweep / "0" / "raw" / "process-0.jsonl").read_text().count('"kind": "request"') >= 2
    assert not (sweep / "1").exists()
    return sweep, uri, proc


def _parent(uri: str) -> object:
    return next(r for r in all_runs(client_for(uri)) if r.data.tags.get("lem.kind") == "sweep")


def test_sigterm_of_a_tracked_sweep_closes_its_parent_and_logs_the_job(tiny_model: Path, tmp_path: Path) -> None:
    _, uri, proc = _killed_sweep(tiny_model, tmp_path, signal.SIGTERM)
    assert proc.returncode == 143
    parent = _parent(uri)
    assert parent.info.status == "KILLED" and parent.info.end_time is not None
    children = [r for r in all_runs(client_for(uri)) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert [c.info.status for c in children] == ["KILLED"]  # job 0, interrupted: kept, not FAILED, not lost


def test_sigkill_of_a_tracked_sweep_leaves_a_parent_that_sync_closes(tiny_model: Path, tmp_path: Path) -> None:
    sweep, uri, proc = _killed_sweep(tiny_model, tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert _parent(uri).info.status == "RUNNING"  # nothing runs after SIGKILL
    synced = subprocess.run([sys.executable, "-m", "lem", "sync", str(sweep), "--tracking-uri", uri],
                            cwd=tmp_path, env=lem_env(), capture_output=True, text=True, timeout=180)
    assert synced.returncode == 0, synced.stderr
    parent = _parent(uri)
    assert parent.info.status == "KILLED" and parent.info.end_time is not None
    children = [r for r in all_runs(client_for(uri)) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 1 and children[0].info.status == "KILLED"  # job 0's records, under the parent that ran it
