"""Tracking under faults and with secrets: what a user sees, and that nothing is lost or leaked.

- a password in the tracking URI appears nowhere: not on stdout/stderr, not in the run folder,
  not in MLflow (params, tags, artefacts);
- ``lem sync`` never resolves ``${oc.env:...}`` with the syncing user's environment;
- atomic writes give files the usual mode (not mkstemp's 0600);
- several processes opening a fresh SQLite store at once all succeed;
- a tracking server killed mid-sweep costs seconds, not minutes per call; one sync hint;
- sweep parents of killed processes are closed (KILLED), and their jobs and interrupted Optuna
  trials land under the parent that ran them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_model import make_tiny_model_dir
from tests.tracking.test_tracking import (
    FAST,
    all_runs,
    client_for,
    lem_env,
    run_cli,
    run_lem,
    sqlite_uri,
)

SECRET = "hunter2-s3cret"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(autouse=True)
def _fresh_session() -> Any:
    from lem.session import begin

    begin()
    yield
    begin()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def files_text(root: Path) -> dict[Path, str]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            try:
                out[p] = p.read_text(errors="replace")
            except OSError:
                pass
    return out


def store_text(uri: str, tmp: Path) -> str:
    """Everything the store holds for its runs: names, params, tags, metric names, artefact contents."""
    client = client_for(uri)
    parts = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            parts += [run.info.run_name or "", json.dumps(run.data.params), json.dumps(run.data.tags), " ".join(run.data.metrics)]
            dest = tmp / "dl" / run.info.run_id
            dest.mkdir(parents=True, exist_ok=True)
            client.download_artifacts(run.info.run_id, "", str(dest))
            parts += list(files_text(dest).values())
    return "\n".join(parts)


def fake_run(run_dir: Path, *, hydra_config: str, resolved_config: str | None = None, started_s: float | None = None) -> Path:
    """A result folder as lem leaves it (summary, Hydra's config, maybe the resolved config), without running a model."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(hydra_config)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- batching.batch_size=2\n")
    if resolved_config is not None:
        (run_dir / "resolved_config.yaml").write_text(resolved_config)
    summary = {"status": "completed", "run": {"engine": "pytorch", "model": "m", "started_unix_s": started_s or time.time()}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


# --- 1. credentials in URIs --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, hidden", [
    ("postgresql://user:pw1@db.example/lem", "pw1"),
    ("http://alice:pw2@127.0.0.1:5000", "pw2"),
    ("tracking.tracking_uri=https://bob:pw3@mlflow.example", "pw3"),
    ("mysql+pymysql://u:pw4@h:3306/db?charset=utf8", "pw4"),
    ("https://host/api?token=pw5&x=1", "pw5"),
    ("sqlite:////tmp/x.db?password=pw6", "pw6"),
    ("https://ghp_pw7@github.com/org/repo", "ghp_pw7"),
])
def test_redact_hides_every_kind_of_uri_credential(text: str, hidden: str) -> None:
    from lem.redact import redact, redact_obj

    assert hidden not in redact(text) and "***" in redact(text)
    assert redact(redact(text)) == redact(text)
    assert hidden not in json.dumps(redact_obj({"a": [text], text: 1}))
    assert redact("sqlite:////tmp/mlruns/mlflow.db batching.batch_size=4") == "sqlite:////tmp/mlruns/mlflow.db batching.batch_size=4"


def test_a_password_in_the_tracking_uri_is_nowhere_in_output_folder_or_store(
        tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from lem.tracking.sync import main as sync_main

    run_dir = tmp_path / "run"
    uri = f"http://lem-user:{SECRET}@127.0.0.1:9"  # nothing listens: the run keeps its results and says how to sync
    result = run_lem(["lem", f"model.name_or_path={tiny_model}", f"hydra.run.dir={run_dir}", f"tracking.tracking_uri={uri}", *FAST],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stdout + result.stderr
    assert "http://lem-user:***@127.0.0.1:9" in result.stderr and f"python -m lem sync {run_dir}" in result.stderr
    assert (run_dir / "summary.json").is_file()
    leaked = [str(p) for p, text in files_text(run_dir).items() if SECRET in text]
    assert leaked == [], f"the password is on disk in {leaked}"
    assert "lem-user:***@" in (run_dir / "resolved_config.yaml").read_text()

    store = sqlite_uri(tmp_path / "store" / "mlflow.db")
    synced = run_cli(sync_main, [str(run_dir), "--tracking-uri", store], capsys, monkeypatch)
    assert synced.returncode == 0, synced.stderr
    runs = all_runs(client_for(store))
    assert len(runs) == 1 and runs[0].data.params["tracking.tracking_uri"] == "http://lem-user:***@127.0.0.1:9"
    assert SECRET not in store_text(store, tmp_path)


def test_artefacts_params_and_tags_with_a_credential_are_uploaded_redacted(tmp_path: Path) -> None:
    """A folder written before lem redacted (or by hand) still uploads nothing secret."""
    from lem.tracking.mlflow_sink import log_run_dir
    from lem.tracking.store import Target, reset_connections

    cfg = f"tracking:\n  tracking_uri: postgresql://u:{SECRET}@db/lem\nhydra:\n  sweeper:\n    storage: mysql://o:{SECRET}@h/optuna\n"
    run_dir = fake_run(tmp_path / "old-run", hydra_config=cfg, resolved_config=cfg)
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- tracking.tracking_uri=postgresql://u:{SECRET}@db/lem\n")
    (run_dir / ".hydra" / "hydra.yaml").write_text(cfg)
    uri = sqlite_uri(tmp_path / "mlflow.db")
    reset_connections()
    run_id, new = log_run_dir(run_dir, Target(uri), live=False)
    assert new
    run = client_for(uri).get_run(run_id)
    assert run.data.params["tracking.tracking_uri"] == "postgresql://u:***@db/lem"
    assert "postgresql://u:***@db/lem" in run.data.tags["lem.overrides"]
    assert SECRET not in store_text(uri, tmp_path)
    assert SECRET in (run_dir / "resolved_config.yaml").read_text()  # uploading never rewrites the user's folder


# --- 2. sync never resolves interpolations ----------------------------------------------------------------


def test_sync_never_resolves_env_interpolations_with_the_syncing_users_environment(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from lem.tracking.sync import main as sync_main

    hydra_cfg = "model:\n  name_or_path: ${oc.env:LEM_TEST_SYNC_SECRET,fallback}\nbatching:\n  batch_size: 2\n"
    old = fake_run(tmp_path / "runs" / "old", hydra_config=hydra_cfg)  # a folder from before resolved_config.yaml
    new = fake_run(tmp_path / "runs" / "new", hydra_config=hydra_cfg,
                   resolved_config="model:\n  name_or_path: what-the-run-used\nbatching:\n  batch_size: 2\n")
    uri = sqlite_uri(tmp_path / "mlflow.db")
    result = run_cli(sync_main, [str(tmp_path / "runs"), "--tracking-uri", uri], capsys, monkeypatch,
                     LEM_TEST_SYNC_SECRET="syncing-users-secret")
    assert result.returncode == 0, result.stderr
    assert "syncing-users-secret" not in result.stdout + result.stderr
    runs = {Path(r.data.tags["lem.run_dir"]).name: r for r in all_runs(client_for(uri))}
    assert runs["new"].data.params["model.name_or_path"] == "what-the-run-used"  # the value resolved at run time
    assert runs["old"].data.params["model.name_or_path"] == "${oc.env:LEM_TEST_SYNC_SECRET,fallback}"  # as written
    assert "syncing-users-secret" not in store_text(uri, tmp_path)
    assert old.is_dir() and new.is_dir()


# --- 3. file modes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_give_the_usual_file_mode(tmp_path: Path, umask: int, mode: int) -> None:
    from lem.files import write_json_atomic as cache_write
    from lem.results.writer import write_json_atomic, write_resolved_config

    before = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "summary.json", {"a": 1})
        cache_write(tmp_path / "cache.json", {"a": 1})
        write_resolved_config({"x": 1}, tmp_path)
    finally:
        os.umask(before)
    for name in ("summary.json", "cache.json", "resolved_config.yaml"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


# --- 4. a fresh store, first used by several processes at once ---------------------------------------------


def _first_use(uri: str, barrier: Any, index: int, results: Any) -> None:
    from lem.session import begin
    from lem.tracking.store import Target, connect

    begin()
    try:
        import mlflow  # noqa: F401 - imported before the barrier: every process reaches the store together

        barrier.wait(timeout=120)
        client, experiment_id = connect(Target(uri, "fresh"))
        run = client.create_run(experiment_id, run_name=f"p{index}")
        client.set_terminated(run.info.run_id)
        results.put((index, "ok"))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put((index, f"{type(exc).__name__}: {exc}"))


def test_a_fresh_store_opened_by_several_processes_at_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    n = 4
    uri = sqlite_uri(tmp_path / "mlruns" / "mlflow.db")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_first_use, args=(uri, barrier, i, results)) for i in range(n)]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert outcomes == {i: "ok" for i in range(n)}, outcomes
    runs = all_runs(client_for(uri), "fresh")  # the store is usable afterwards
    assert sorted(r.info.run_name for r in runs) == [f"p{i}" for i in range(n)]


# --- 5. a tracking server that dies mid-sweep ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_tracking_server_killed_mid_sweep_costs_seconds_and_one_sync_hint(tiny_model: Path, tmp_path: Path) -> None:
    import urllib.request

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", sqlite_uri(tmp_path / "server.db"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        sweep_dir = tmp_path / "multirun"
        env = lem_env()
        env.pop("LEM_MLFLOW_PARENT_RUN_ID", None)
        env.pop("LEM_SWEEP_ID", None)
        sweep = subprocess.Popen(
            [sys.executable, "-m", "lem", "-m", f"model.name_or_path={tiny_model}", "batching.batch_size=1,2",
             f"hydra.sweep.dir={sweep_dir}", f"tracking.tracking_uri=http://127.0.0.1:{port}", *FAST],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 400
        while not (sweep_dir / "1").exists():  # job 0 ran and logged itself; job 1 begins
            assert sweep.poll() is None and time.monotonic() < deadline, "the sweep ended before its second job"
            time.sleep(0.2)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        killed_at = time.monotonic()
        try:
            out, err = sweep.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            sweep.kill()
            pytest.fail("the sweep still waits for the dead server 4 min later")
        extra_s = time.monotonic() - killed_at
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    assert sweep.returncode == 0, err[-3000:]
    assert extra_s < 60, f"the sweep took {extra_s:.0f} s after the server died"
    for job in ("0", "1"):
        assert (sweep_dir / job / "summary.json").is_file() and (sweep_dir / job / "raw" / "process-0.jsonl").is_file()
    hints = [line for line in err.splitlines() if "python -m lem sync" in line]
    assert len(hints) == 1 and str(sweep_dir) in hints[0], err[-3000:]
    assert "Traceback" not in err


# --- 6. sweep parents of killed processes ---------------------------------------------------------------------


def test_sync_closes_a_killed_sweeps_parent_and_files_each_job_under_its_own_parent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from lem.tracking.store import Target, connect, reset_connections
    from lem.tracking.sweep import OWNER_PID_TAG, create_parent, write_sweep_file

    uri = sqlite_uri(tmp_path / "mlflow.db")
    target = Target(uri)
    reset_connections()
    client, _ = connect(target)
    # session 1 of a sweep (a study): killed by SIGKILL while its parent was RUNNING
    old_parent = create_parent(target, sweep_id="session-1", overrides=["batching.batch_size=1,2"], config=None, sweep_dir=tmp_path)
    client.set_tag(old_parent, OWNER_PID_TAG, str(dead_pid()))
    # session 2 (resumed in the same folder) wrote its own parent into the sweep folder, then died too
    sweep_dir = tmp_path / "multirun"
    write_sweep_file(sweep_dir, {"parent_run_id": "not-in-this-store", "sweep_id": "session-2"})
    start = time.time() - 60
    for num, session in ((0, "session-1"), (1, "session-2")):
        job = fake_run(sweep_dir / str(num), hydra_config="batching:\n  batch_size: 2\n", started_s=start + num)
        (job / ".lem_parent.json").write_text(json.dumps({"parent_run_id": "x", "sweep_id": session}))
    reset_connections()

    from lem.tracking.sync import main as sync_main

    result = run_cli(sync_main, [str(sweep_dir), "--tracking-uri", uri], capsys, monkeypatch)
    assert result.returncode == 0, result.stderr
    assert "killed" in result.stdout.lower()
    client = client_for(uri)
    runs = all_runs(client)
    parents = {r.data.tags["lem.sweep_id"]: r for r in runs if r.data.tags.get("lem.kind") == "sweep"}
    assert set(parents) == {"session-1", "session-2"}
    closed = client.get_run(old_parent)
    assert closed.info.status == "KILLED" and closed.info.end_time is not None
    children = {Path(r.data.tags["lem.run_dir"]).name: r for r in runs if "lem.kind" not in r.data.tags}
    assert children["0"].data.tags["mlflow.parentRunId"] == old_parent  # the parent that ran it
    assert children["1"].data.tags["mlflow.parentRunId"] == parents["session-2"].info.run_id


def test_sync_leaves_the_parent_of_a_running_sweep_open(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from lem.tracking.store import Target, reset_connections
    from lem.tracking.sweep import create_parent, write_sweep_file

    uri = sqlite_uri(tmp_path / "mlflow.db")
    reset_connections()
    parent = create_parent(Target(uri), sweep_id="live", overrides=[], config=None, sweep_dir=tmp_path)  # owned by this process
    sweep_dir = tmp_path / "multirun"
    write_sweep_file(sweep_dir, {"parent_run_id": parent, "sweep_id": "live"})
    fake_run(sweep_dir / "0", hydra_config="batching:\n  batch_size: 2\n")
    reset_connections()
    from lem.tracking.sync import main as sync_main

    result = run_cli(sync_main, [str(sweep_dir), "--tracking-uri", uri], capsys, monkeypatch)
    assert result.returncode == 0, result.stderr
    assert client_for(uri).get_run(parent).info.status == "RUNNING"


def test_a_resumed_study_logs_interrupted_trials_under_the_parent_that_ran_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState

    from lem.search.resume import log_interrupted_trials
    from lem.search.settings import ATTR_WORKER, StudySettings
    from lem.search.storage import _ask, open_study
    from lem.tracking.store import (
        ENV_PARENT_RUN_ID,
        ENV_SWEEP_ID,
        Target,
        connect,
        reset_connections,
    )
    from lem.tracking.sweep import OWNER_PID_TAG, create_parent

    uri = sqlite_uri(tmp_path / "mlflow.db")
    target = Target(uri)
    reset_connections()
    client, _ = connect(target)
    old_parent = create_parent(target, sweep_id="study-1", overrides=[], config=None, sweep_dir=tmp_path)
    client.set_tag(old_parent, OWNER_PID_TAG, str(dead_pid()))
    settings = StudySettings(study_name="s", storage=sqlite_uri(tmp_path / "optuna.db"), directions=["minimize"],
                             objectives=["energy.j_per_output_token"], n_trials=3, n_jobs=1, max_failure_rate=1.0,
                             limits={}, deduplicate=True, identity=["x=1"])
    space = {"batching.batch_size": IntDistribution(1, 8)}
    monkeypatch.setenv(ENV_PARENT_RUN_ID, old_parent)
    monkeypatch.setenv(ENV_SWEEP_ID, "study-1")
    study = open_study(settings, None, space)
    trial = _ask(study, space)  # session 1 asks trial 0 and is killed: no job folder yet
    trial.set_user_attr(ATTR_WORKER, {"host": socket.gethostname(), "pid": dead_pid()})
    monkeypatch.setenv(ENV_PARENT_RUN_ID, "session-2-parent")  # the resumed session runs under another parent
    study = open_study(settings, None, space)
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].user_attrs.get("lem.interrupted")

    assert log_interrupted_trials(study, target, tmp_path / "multirun", "s") == [0]
    assert log_interrupted_trials(optuna.load_study(study_name="s", storage=settings.storage), target, tmp_path / "multirun", "s") == []
    runs = all_runs(client_for(uri))
    logged = [r for r in runs if r.data.tags.get("lem.optuna.trial_number") == "0"]
    assert len(logged) == 1 and logged[0].data.tags["mlflow.parentRunId"] == old_parent
    assert logged[0].info.status == "KILLED"
    closed = client_for(uri).get_run(old_parent)
    assert closed.info.status == "KILLED" and closed.info.end_time is not None
