"""MLflow tracking end to end: real tiny runs logged into a temporary store and read back with MlflowClient.

Every lem run here is ``python -m lem`` in a subprocess on a tiny random-weight model (CPU),
with the store given by ``tracking.tracking_uri`` or ``MLFLOW_TRACKING_URI`` so nothing lands
in the project's own ``mlruns/``.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tiny_model import make_tiny_model_dir

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "tiny-llama"  # the model folder's name: it ends every run name

# Fast and quiet: no idle baseline, no calflops subprocess, one thread.
FAST = ("energy.idle_baseline_s=0", "flops.strategy=analytical", "backend.pytorch.num_threads=1",
        "dataset.n_prompts=6", "dataset.max_output_tokens=6")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / MODEL_NAME)


def lem_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    if "MLFLOW_TRACKING_URI" not in extra:
        env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_lem(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env or lem_env(), capture_output=True, text=True, timeout=timeout)


def run_cli(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
            **env: str) -> subprocess.CompletedProcess[str]:
    """A lem command run in this process (no interpreter and MLflow start-up): same result shape as run_lem."""
    from lem.tracking.store import reset_connections

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_connections()
    capsys.readouterr()
    try:
        rc = main(argv)
    finally:
        reset_connections()
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, rc, out, err)


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


def client_for(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def all_runs(client: Any, experiment: str = "lem") -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    return list(client.search_runs([exp.experiment_id], max_results=1000))


def artifact_paths(client: Any, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def hydra_spelling(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


# --- one run, logged live ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("logged-run")
    store = tmp / "store" / "mlflow.db"
    run_dir = tmp / "run"
    result = run_lem(
        ["lem", f"model.name_or_path={tiny_model}", f"hydra.run.dir={run_dir}", "batching.batch_size=4",
         f"tracking.tracking_uri={sqlite_uri(store)}", "tracking.experiment_name=lem-test", *FAST],
        cwd=tmp,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"tmp": tmp, "uri": sqlite_uri(store), "store": store, "run_dir": run_dir, "result": result}


def test_run_is_logged_with_params_metrics_tags_and_artifacts(logged_run: dict[str, Any], tiny_model: Path) -> None:
    import lem

    client = client_for(logged_run["uri"])
    runs = all_runs(client, "lem-test")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    summary = json.loads((logged_run["run_dir"] / "summary.json").read_text())
    assert summary["run"]["dtype"] == "float32"  # precision.dtype=auto, resolved on a CPU: the name says which
    assert run.info.run_name == f"pytorch-static-bs4-fp32 {MODEL_NAME}"
    run_dir: Path = logged_run["run_dir"]

    # params: the resolved config, flattened to dotted keys, spelled as Hydra spells values — less the
    # knobs of the engines that did not run
    resolved = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    inactive = {k for k, v in resolved["backend"].items() if isinstance(v, dict) and k != "pytorch"}
    assert inactive >= {"vllm", "llama_cpp"}
    expected = {k: hydra_spelling(v) for k, v in flat({k: v for k, v in resolved.items() if k != "hydra"}).items()
                if not any(k.startswith(f"backend.{e}.") for e in inactive)}
    assert run.data.params == expected
    assert not [k for k in run.data.params if k.startswith(("backend.vllm.", "backend.llama_cpp.", "backend.tensorrt."))]
    assert run.data.params["backend.pytorch.num_threads"] == "1"  # the active engine's knobs stay
    assert run.data.params["batching.batch_size"] == "4"
    assert run.data.params["backend.name"] == "pytorch"  # the value, not the enum's repr
    assert run.data.params["model.name_or_path"] == str(tiny_model)

    # metrics: the headline under headline/ and only there; the rest kind/name_unit, equal to the summary's figures
    from lem.tracking.metrics import HEADLINE_METRICS, value_at

    m = run.data.metrics
    assert set(HEADLINE_METRICS) == {"headline/j_per_output_token", "headline/net_j_per_output_token", "headline/output_tokens_per_s",
                                     "headline/ttft_ms_p50", "headline/ttft_ms_p99", "headline/tpot_ms_p50"}
    for name, path in HEADLINE_METRICS.items():
        if value_at(summary, path) is not None:  # net J/token needs an idle baseline, off here
            assert m[name] == pytest.approx(value_at(summary, path)), name
    assert {"headline/j_per_output_token", "headline/output_tokens_per_s", "headline/ttft_ms_p50"} <= set(m)
    assert {k for k in m if k.startswith("headline/")} <= set(HEADLINE_METRICS)
    old = {"energy/j_per_output_token", "energy/net_j_per_output_token", "throughput/output_tokens_per_s", "latency/ttft_ms_p50",
           "latency/ttft_ms_p99", "latency/tpot_ms_p50", "energy/generation_energy_j", "energy/net_generation_energy_j",
           "energy/output_tokens_per_j", "energy/estimated_j_per_output_token", "energy/all_phases_energy_j",
           "throughput/generation_wall_s", "tokens/total_tokens", "energy/phase/generation_estimated_j"}
    assert not old & set(m), old & set(m)  # each quantity under one name
    assert not [k for k in m if k.startswith(("energy/component/", "energy/codecarbon/", "energy/idle_baseline/"))]
    assert not [k for k in m if "unix" in k or k.endswith(("/start_s", "/end_s"))]  # no timestamps
    assert not [k for k in m if k in ("batching/batch_size", "batching/max_tokens_per_batch", "energy/co2/pue")]  # no config echoes
    assert not [k for k in m if k.startswith("energy/phase/generation/")]  # by device, not again by component
    assert m["latency/tpot_ms_p99"] == pytest.approx(summary["latency"]["tpot_ms"]["p99"])
    assert m["energy/phase/generation_j"] == pytest.approx(summary["energy"]["generation_energy_j"])
    assert m["flops/useful_flops_per_output_token"] == pytest.approx(summary["flops"]["useful_flops_per_output_token"])
    assert m["memory/peak_rss_bytes"] == pytest.approx(summary["memory"]["peak_rss_bytes"])
    assert m["energy/co2/co2_g"] == pytest.approx(summary["energy"]["co2"]["co2_g"])  # nested sections keep their path
    for phase in ("engine_init", "model_load", "warmup", "generation"):  # per-phase energy, in J
        assert m[f"energy/phase/{phase}_j"] == pytest.approx(summary["phases"][phase]["energy_j"])
    assert m["energy/device/cpu/generation_j"] > 0  # per device (here the CPU; cuda_0, cuda_1... on GPUs)
    assert {k.split("/")[0] for k in m} <= {"headline", "run", "energy", "latency", "throughput", "flops", "memory", "tokens", "batching",
                                            "time", "device", "system", "request", "floor", "goodput"}
    assert all(k.endswith(("_ms_mean", "_ms_p50", "_ms_p90", "_ms_p99", "_ms_max")) for k in m if k.startswith("latency/"))
    assert all(k.endswith("_s") for k in m if k.startswith(("throughput/", "time/")))
    assert len([k for k in m if not k.startswith("system/")]) < 100  # was 137 on a CPU run

    # the power timeline as system metrics: one series per device and quantity, step = ms since the run's start
    timeline = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(run.info.run_id, "timeline.csv", str(logged_run["tmp"] / "tl"))).read_text())))
    power = [r for r in timeline if r["device"] == "cpu" and r["power_w"]]
    assert power, "no CPU power in the timeline"
    key = "system/cpu/power_w" + ("_estimated" if power[0]["source"] == "estimated" else "")
    history = client.get_metric_history(run.info.run_id, key)
    assert [h.step for h in history] == [round(float(r["t_s"]) * 1000) for r in power]
    assert [h.value for h in history] == pytest.approx([float(r["power_w"]) for r in power])
    t0_ms = summary["run"]["started_unix_s"] * 1000
    assert all(abs(h.timestamp - (t0_ms + h.step)) <= 1 for h in history)  # the sample's wall-clock time
    assert run.info.start_time <= history[0].timestamp <= history[-1].timestamp <= run.info.end_time

    # the description opens with the headline line, then the command that reproduces the run
    from lem.report.headline import headline_line

    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(headline_line(summary) + "\n") and "`python -m lem " in note

    # tags
    t = run.data.tags
    assert t["lem.backend"] == "pytorch"
    assert t["lem.model"] == str(tiny_model)
    assert t["lem.devices"] and t["lem.device_type"] == "cpu"
    assert t["lem.version"] == lem.__version__
    assert "batching.batch_size=4" in t["lem.overrides"].split()
    assert "lem.sweep_id" not in t  # a single run belongs to no sweep
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert t["lem.git_commit"] == head.stdout.strip()

    # artifacts: raw records, summary, config, overrides, timeline, plots
    paths = artifact_paths(client, run.info.run_id)
    assert {"raw/process-0.jsonl", "summary.json", "resolved_config.yaml", "overrides.yaml", "timeline.csv",
            "plots/power_timeline.png", "plots/energy_by_phase.png"} <= paths
    local = Path(client.download_artifacts(run.info.run_id, "summary.json", str(logged_run["tmp"] / "dl")))
    assert json.loads(local.read_text()) == summary
    png = Path(client.download_artifacts(run.info.run_id, "plots/power_timeline.png", str(logged_run["tmp"] / "dl")))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    timeline = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(run.info.run_id, "timeline.csv", str(logged_run["tmp"] / "dl"))).read_text())))
    assert timeline and {"t_s", "power_w", "device", "source"} <= set(timeline[0])

    # the store and its artifacts stay where the URI says, never in the job's working directory
    assert (logged_run["store"].parent / "artifacts").is_dir()
    assert not (logged_run["tmp"] / "mlruns").exists()


def test_export_csv_from_store_with_a_param_filter(logged_run: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from lem.tracking.export import main as export_main

    out = tmp_path / "runs.csv"
    args = ["--tracking-uri", logged_run["uri"], "--experiment", "lem-test", "-o", str(out)]
    result = run_lem(["lem", "export", *args, "--filter", "params.batching.batch_size = '4'"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1
    row = rows[0]
    assert row["run_name"] == f"pytorch-static-bs4-fp32 {MODEL_NAME}" and row["status"] == "FINISHED"
    assert row["params.batching.batch_size"] == "4" and row["energy_source"] == "estimated"
    summary = json.loads((logged_run["run_dir"] / "summary.json").read_text())
    assert float(row["metrics.headline/j_per_output_token"]) == pytest.approx(summary["energy"]["j_per_output_token"])
    assert float(row["metrics.headline/ttft_ms_p99"]) == pytest.approx(summary["latency"]["ttft_ms"]["p99"])
    assert float(row["metrics.energy/phase/generation_j"]) == pytest.approx(summary["energy"]["generation_energy_j"])
    assert "metrics.energy/j_per_output_token" not in row

    result = run_cli(export_main, [*args, "--filter", "params.batching.batch_size = '8'"], capsys, monkeypatch)
    assert result.returncode == 0 and list(csv.DictReader(out.open())) == []


# --- an unreachable store ---------------------------------------------------------------------------------


def test_unreachable_store_warns_once_keeps_results_and_sync_logs_them_later(
        tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from lem.tracking.sync import main as sync_main

    run_dir = tmp_path / "run"
    result = run_lem(
        ["lem", f"model.name_or_path={tiny_model}", f"hydra.run.dir={run_dir}", "tracking.tracking_uri=http://127.0.0.1:9", *FAST],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "summary.json").is_file() and (run_dir / "raw" / "process-0.jsonl").is_file()
    warnings = [line for line in result.stderr.splitlines() if "warning" in line.lower() and "tracking" in line.lower()]
    assert len(warnings) == 1, result.stderr
    assert "http://127.0.0.1:9" in warnings[0] and f"python -m lem sync {run_dir}" in warnings[0]

    # the server is still down: sync says so in one line and fails
    down = run_lem(["lem", "sync", str(run_dir)], cwd=tmp_path)
    assert down.returncode == 1 and len(down.stderr.strip().splitlines()) == 1 and "unavailable" in down.stderr

    uri = sqlite_uri(tmp_path / "later" / "mlflow.db")
    first = run_cli(sync_main, [str(tmp_path), "--tracking-uri", uri], capsys, monkeypatch)
    assert first.returncode == 0, first.stderr
    assert "logged 1 run(s), skipped 0" in first.stdout
    second = run_cli(sync_main, [str(run_dir)], capsys, monkeypatch, MLFLOW_TRACKING_URI=uri)
    assert second.returncode == 0, second.stderr
    assert "logged 0 run(s), skipped 1" in second.stdout
    runs = all_runs(client_for(uri))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["headline/j_per_output_token"] > 0
    assert "plots/energy_by_phase.png" in artifact_paths(client_for(uri), runs[0].info.run_id)


# --- a multirun with a failing job ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """4 jobs over model.name_or_path; job 2 names a folder whose config.json passes validation but that holds no weights."""
    tmp = tmp_path_factory.mktemp("sweep")
    models = []
    for name in ("a", "b", "broken", "c"):
        path = tmp / f"model-{name}"
        if name == "broken":
            path.mkdir()
            (path / "config.json").write_text('{"model_type": "llama"}')  # weights not downloaded yet: fails at load
        else:
            path.symlink_to(tiny_model, target_is_directory=True)
        models.append(str(path))
    uri = sqlite_uri(tmp / "store" / "mlflow.db")
    sweep_dir = tmp / "multirun"
    result = run_lem(
        ["lem", "-m", f"model.name_or_path={','.join(models)}", f"hydra.sweep.dir={sweep_dir}", "batching.batch_size=2", *FAST],
        cwd=tmp, env=lem_env(MLFLOW_TRACKING_URI=uri),  # the store through the environment this time
    )
    return {"tmp": tmp, "uri": uri, "sweep_dir": sweep_dir, "result": result, "models": models}


def test_multirun_is_one_parent_with_a_child_per_job_and_the_failure_recorded(sweep: dict[str, Any]) -> None:
    result = sweep["result"]
    assert result.returncode == 1, result.stderr[-3000:]  # the sweep went on, then said a job failed
    assert "job 2 failed" in result.stderr
    for job in ("0", "1", "3"):
        assert (sweep["sweep_dir"] / job / "summary.json").is_file()

    client = client_for(sweep["uri"])
    runs = all_runs(client)
    parents = [r for r in runs if r.data.tags.get("lem.kind") == "sweep"]
    assert len(parents) == 1 and len(runs) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("sweep model.name_or_path=")
    children = sorted((r for r in runs if r is not parent), key=lambda r: int(r.data.tags["lem.job_num"]))
    assert all(c.data.tags.get("mlflow.parentRunId") == parent.info.run_id for c in children)
    assert all(c.data.tags["lem.sweep_id"] == parent.data.tags["lem.sweep_id"] for c in children)
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED", "FAILED", "FINISHED"]
    # dtype=auto resolved to float32 where the model loaded; the broken job never got that far
    assert [c.info.run_name for c in children] == ["pytorch-static-bs2-fp32 model-a #0", "pytorch-static-bs2-fp32 model-b #1",
                                                   "pytorch-static-bs2 model-broken #2", "pytorch-static-bs2-fp32 model-c #3"]

    failed = children[2]
    assert "error.txt" in artifact_paths(client, failed.info.run_id)
    error = Path(client.download_artifacts(failed.info.run_id, "error.txt", str(sweep["tmp"] / "dl"))).read_text()
    assert "Traceback" in error and "model-broken" in error
    assert failed.data.params["model.name_or_path"] == sweep["models"][2]

    # the parent: the children's table, headline metrics, the Pareto plot
    assert parent.data.metrics["sweep/n_jobs"] == 4 and parent.data.metrics["sweep/n_failed"] == 1
    assert parent.data.metrics["headline/j_per_output_token"] == pytest.approx(  # the best job's headline
        min(c.data.metrics["headline/j_per_output_token"] for c in children if c.info.status == "FINISHED"))
    assert {"sweep/children.csv", "plots/pareto_j_per_token_vs_throughput.png"} <= artifact_paths(client, parent.info.run_id)
    table = list(csv.DictReader(Path(client.download_artifacts(parent.info.run_id, "sweep/children.csv", str(sweep["tmp"] / "dl"))).open()))
    assert [row["status"] for row in table] == ["FINISHED", "FINISHED", "FAILED", "FINISHED"]
    assert table[0]["model.name_or_path"] == sweep["models"][0] and float(table[0]["headline/j_per_output_token"]) > 0
    assert parent.data.params["model.name_or_path"] == ",".join(sweep["models"])  # the sweep, not the default


def test_sync_recreates_the_sweep_in_another_store_and_never_duplicates(
        sweep: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from lem.tracking.sync import main as sync_main

    tmp, sweep_dir = sweep["tmp"], sweep["sweep_dir"]
    # the store the sweep logged to live: everything is there already
    again = run_cli(sync_main, [str(sweep_dir), "--tracking-uri", sweep["uri"]], capsys, monkeypatch)
    assert again.returncode == 0, again.stderr
    assert "logged 0 run(s), skipped 4" in again.stdout
    assert len(all_runs(client_for(sweep["uri"]))) == 5

    # a fresh store (say, the team's server): parent recreated, children under it, failure kept
    uri = sqlite_uri(tmp / "team" / "mlflow.db")
    first = run_lem(["lem", "sync", str(tmp), "--tracking-uri", uri], cwd=tmp)  # the folder above: the sweep is found
    assert first.returncode == 0, first.stderr
    assert "logged 4 run(s), skipped 0" in first.stdout
    second = run_cli(sync_main, [str(sweep_dir / "1"), str(sweep_dir), "--tracking-uri", uri], capsys, monkeypatch)
    assert second.returncode == 0, second.stderr
    assert "logged 0 run(s), skipped 4" in second.stdout

    client = client_for(uri)
    runs = all_runs(client)
    parents = [r for r in runs if r.data.tags.get("lem.kind") == "sweep"]
    assert len(parents) == 1 and len(runs) == 5
    children = [r for r in runs if r is not parents[0]]
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["sweep/n_failed"] == 1
    assert "plots/pareto_j_per_token_vs_throughput.png" in artifact_paths(client, parents[0].info.run_id)
    live = {r.data.tags.get("lem.run_key"): r for r in all_runs(client_for(sweep["uri"]))}
    for c in children:  # the same runs, the same numbers
        twin = live[c.data.tags["lem.run_key"]]
        assert c.data.metrics == twin.data.metrics and c.data.params == twin.data.params

    # export straight from the folders, no MLflow involved
    out = run_lem(["lem", "export", "--from-dirs", str(sweep_dir)], cwd=tmp)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["status"] for r in rows] == ["FINISHED", "FINISHED", "FAILED", "FINISHED"]
    assert rows[2]["metrics.headline/j_per_output_token"] == ""  # a failed job measured nothing: empty, not 0


def test_sweep_with_a_job_refused_by_validation_still_closes_its_parent(tiny_model: Path, tmp_path: Path) -> None:
    uri = sqlite_uri(tmp_path / "mlflow.db")
    args = ["lem", "-m", "batching.batch_size=0,2", f"model.name_or_path={tiny_model}", f"hydra.sweep.dir={tmp_path / 'multirun'}",
            f"tracking.tracking_uri={uri}", *FAST]
    try:
        result = run_lem(args, cwd=tmp_path, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("python -m lem -m with a job refused by validation never exited (the engine worker was not stopped at exit)")
    assert result.returncode != 0 and "batching.batch_size=0" in result.stderr
    client = client_for(uri)
    runs = all_runs(client)
    parent = next(r for r in runs if r.data.tags.get("lem.kind") == "sweep")
    assert parent.info.status != "RUNNING"  # Hydra skipped on_multirun_end; lem closed the parent at exit
    assert parent.info.run_name == "sweep batching.batch_size=0,2"
    children = {r.data.params["batching.batch_size"]: r for r in runs if r is not parent}
    assert children["2"].info.status == "FINISHED"
    # Refused before anything started: no run and no folder for that job; the parent and stderr name the refusal.
    assert "0" not in children and not (tmp_path / "multirun" / "0").exists()
    assert parent.data.tags["lem.refused_jobs"].startswith("1 of 2 jobs refused: batching.batch_size=0: expected a number >= 1 (job 0)")
    assert "lem: error: 1 of 2 jobs refused: batching.batch_size=0" in result.stderr


# --- the parent's plots, without running a model ----------------------------------------------------------


def test_sweep_over_two_parameters_gets_a_heatmap_and_a_pareto_front(tmp_path: Path) -> None:
    from mlflow.entities import Metric

    from lem.report.verdict import pareto_front
    from lem.tracking.store import Target, connect, reset_connections
    from lem.tracking.sweep import create_parent, finalize_parent

    reset_connections()
    target = Target(sqlite_uri(tmp_path / "mlflow.db"))
    client, experiment_id = connect(target)
    parent = create_parent(target, sweep_id="s1", overrides=["batching.batch_size=1,8", "backend=pytorch,vllm"], config=None, sweep_dir=None)
    # (bs, backend) → (tokens/s, J/token): vllm bs8 beats everything; pytorch bs1 is dominated
    cells = {("1", "pytorch"): (10.0, 2.0), ("8", "pytorch"): (50.0, 0.6), ("1", "vllm"): (30.0, 0.9), ("8", "vllm"): (200.0, 0.1)}
    for num, ((bs, backend), (tps, jpt)) in enumerate(cells.items()):
        run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, "lem.job_num": str(num),
                                                     "lem.overrides": f"batching.batch_size={bs} backend={backend}"})
        client.log_batch(run.info.run_id, metrics=[Metric("headline/output_tokens_per_s", tps, 0, 0),
                                                   Metric("headline/j_per_output_token", jpt, 0, 0)])
        client.set_terminated(run.info.run_id)
    rows = finalize_parent(target, parent)
    assert len(rows) == 4
    paths = artifact_paths(client, parent)
    assert {"plots/heatmap_j_per_token.png", "plots/pareto_j_per_token_vs_throughput.png", "sweep/children.csv"} <= paths
    header = next(csv.reader(Path(client.download_artifacts(parent, "sweep/children.csv", str(tmp_path / "dl"))).open()))
    assert header[3:5] == ["batching.batch_size", "backend"]
    assert client.get_run(parent).data.metrics["headline/j_per_output_token"] == 0.1  # the best job's
    points = [(10.0, 2.0), (50.0, 0.6), (30.0, 0.9), (200.0, 0.1)]
    assert pareto_front(points) == [3]
    assert pareto_front([(10.0, 0.5), (20.0, 1.0), (5.0, 2.0)]) == [0, 1]
    reset_connections()


# --- pure helpers ----------------------------------------------------------------------------------------------


def test_names_params_and_sweep_overrides() -> None:
    from enum import Enum

    from lem.tracking.metrics import config_params, summary_metrics
    from lem.tracking.mlflow_sink import run_name
    from lem.tracking.sweep import is_sweep_override, sweep_run_name

    class Strategy(Enum):
        static = "static"

    cfg = {"backend": {"name": "pytorch"}, "batching": {"strategy": Strategy.static, "batch_size": 8}, "precision": {"dtype": "bfloat16"},
           "model": {"name_or_path": "meta-llama/Llama-3.1-8B"}, "decoder": {"stop": ["\n"], "temperature": None}}
    assert run_name(cfg) == "pytorch-static-bs8-bf16 Llama-3.1-8B"  # an Enum value shows as its value
    assert run_name({**cfg, "backend": {"name": "vllm"}}).startswith("vllm-static-bs8-")  # lem's batches, handed over as groups
    auto = {**cfg, "backend": {"name": "vllm"}, "batching": {"strategy": "auto", "batch_size": 8}}
    assert run_name(auto).startswith("vllm-continuous-bs8-")  # auto: vLLM schedules itself, at most 8 in flight
    assert run_name({**auto, "backend": {"name": "llama_cpp"}}).startswith("llama_cpp-serial-")  # one at a time
    assert run_name(cfg, job_num=3).endswith(" #3")
    # dtype=auto: the dtype the run resolved, from its summary; the model's name is never what gets cut
    auto_dtype = {**cfg, "precision": {"dtype": "auto"}}
    assert run_name(auto_dtype) == "pytorch-static-bs8 Llama-3.1-8B"
    assert run_name(auto_dtype, {"run": {"dtype": "torch.float16"}}, 12) == "pytorch-static-bs8-fp16 Llama-3.1-8B #12"
    long_model = {**cfg, "model": {"name_or_path": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"}, "backend": {"name": "vllm"},
                  "batching": {"strategy": "sorted_dynamic", "max_tokens_per_batch": 16384}}
    assert run_name(long_model, None, 17) == "vllm-sorted_dynamic-tok16384-bf16 DeepSeek-R1-Distill-Qwen-32B #17"
    huge = run_name({**cfg, "model": {"name_or_path": "org/" + "x" * 30 + "-Llama-70B-Instruct"}})
    assert len(huge.split(" ", 1)[1]) == 40 and huge.endswith("-Llama-70B-Instruct") and "…" in huge  # start and size kept
    assert config_params(cfg) == {"backend.name": "pytorch", "batching.strategy": "static", "batching.batch_size": "8",
                                  "precision.dtype": "bfloat16", "model.name_or_path": "meta-llama/Llama-3.1-8B",
                                  "decoder.stop": '["\\n"]', "decoder.temperature": "null"}
    # the knobs of the engines that did not run are not params; the active one's are, nulls included
    engines = {"name": "vllm", "device": "auto", "pytorch": {"use_cache": True}, "vllm": {"max_num_seqs": None, "engine_args": {}},
               "llama_cpp": {"n_ctx": None}}
    assert config_params({"backend": engines}) == {"backend.name": "vllm", "backend.device": "auto", "backend.vllm.max_num_seqs": "null",
                                                   "backend.vllm.engine_args": "{}"}
    metrics = summary_metrics({"energy": {"j_per_output_token": 0.5, "source": "counter", "gpu_j_per_output_token": None,
                                          "co2": {"co2_g": 1.5}}, "latency": {"ttft_ms": {"p50": 12.0, "p90": 20.0, "p99": None}}})
    assert metrics["headline/j_per_output_token"] == 0.5 and metrics["energy/co2/co2_g"] == 1.5
    assert metrics["headline/ttft_ms_p50"] == 12.0 and metrics["latency/ttft_ms_p90"] == 20.0
    assert "energy/j_per_output_token" not in metrics and "latency/ttft_ms_p50" not in metrics  # the headline only under headline/
    assert "energy/gpu_j_per_output_token" not in metrics and "headline/ttft_ms_p99" not in metrics  # null: not logged, never 0
    assert is_sweep_override("batching.batch_size=1,8") and is_sweep_override("x=range(1,4)")
    assert not is_sweep_override("decoder.stop=[a,b]") and not is_sweep_override("model.name_or_path='a,b'")
    assert sweep_run_name(["dataset.n_prompts=8", "batching.batch_size=1,8", "backend=pytorch,vllm"]) == "sweep batching.batch_size=1,8 backend=pytorch,vllm"


def test_per_gpu_metrics_of_a_two_rank_run() -> None:
    """Two ranks on one host, each on its own GPU: energy, power and memory per GPU, never summed across GPUs."""
    from pathlib import Path as P

    from lem.results.reader import RawProcessRecords
    from lem.tracking.metrics import summary_metrics

    def rank(i: int, gen_j: float, power_w: list[float]) -> RawProcessRecords:
        dev = f"cuda:{i}"
        phases = [
            {"name": "model_load", "start_s": 0.0, "end_s": 1.0, "energy": [{"device": dev, "energy_j": 50.0 + i, "net_energy_j": 10.0}]},
            {"name": "generation", "start_s": 1.0, "end_s": 3.0, "energy": [{"device": dev, "energy_j": gen_j, "net_energy_j": gen_j - 100}]},
        ]
        samples = {"kind": "power_samples", "device": dev, "component": "gpu", "source": "counter", "t_s": [0.5, 1.5, 2.5],
                   "power_w": power_w, "sm_util_pct": [0, 90, 70], "temp_c": [40, 60, 65]}
        return RawProcessRecords(path=P(f"process-{i}.jsonl"), header={"process_index": i, "hostname": "node1", "t0_unix_s": 0.0},
                                 phases=phases, other=[samples])

    summary = {"memory": {"per_process": [
        {"process_index": 0, "cuda_peak_allocated_bytes": [7_000, 0], "cuda_peak_reserved_bytes": [8_000, 0]},
        {"process_index": 1, "cuda_peak_allocated_bytes": [0, 9_000], "cuda_peak_reserved_bytes": [0, 10_000]},
    ]}}
    m = summary_metrics(summary, [rank(0, 300.0, [100.0, 400.0, 300.0]), rank(1, 500.0, [120.0, 600.0, 500.0])])
    assert m["energy/device/cuda_0/generation_j"] == 300.0 and m["energy/device/cuda_1/generation_j"] == 500.0
    assert m["energy/device/cuda_1/generation_net_j"] == 400.0 and m["energy/device/cuda_1/model_load_j"] == 51.0
    assert m["device/cuda_0/generation_mean_power_w"] == 350.0  # the samples inside generation only
    assert m["device/cuda_1/generation_max_power_w"] == 600.0 and m["device/cuda_1/generation_max_temp_c"] == 65.0
    assert m["device/cuda_0/generation_mean_sm_util_pct"] == 80.0
    assert m["memory/device/cuda_0/peak_allocated_bytes"] == 7_000 and m["memory/device/cuda_1/peak_reserved_bytes"] == 10_000

    # the timeline as system metrics: per GPU and quantity, step = ms on the run's clock (rank 1 started 2 s later)
    from lem.tracking.system_metrics import system_series

    late = rank(1, 500.0, [120.0, 600.0, 500.0])
    late.header["t0_unix_s"] = 2.0
    points = system_series([rank(0, 300.0, [100.0, 400.0, 300.0]), late])
    series: dict[str, list[Any]] = {}
    for pt in points:
        series.setdefault(pt.key, []).append(pt)
    assert set(series) == {f"system/cuda_{i}/{q}" for i in (0, 1) for q in ("power_w", "sm_util_pct", "temp_c")}
    assert [(p.step_ms, p.value) for p in series["system/cuda_1/power_w"]] == [(2500, 120.0), (3500, 600.0), (4500, 500.0)]
    assert [p.timestamp_ms for p in series["system/cuda_0/temp_c"]] == [500, 1500, 2500]  # the sample's wall-clock time


def test_system_series_are_named_for_estimates_and_downsampled() -> None:
    from pathlib import Path as P

    from lem.results.reader import RawProcessRecords
    from lem.tracking.system_metrics import MAX_POINTS, system_series

    n = 5 * MAX_POINTS + 3
    cpu = {"kind": "power_samples", "device": "cpu", "component": "cpu", "source": "estimated", "t_s": [i / 10 for i in range(n)],
           "power_w": [10.0 if i % 2 else 30.0 for i in range(n)], "sm_util_pct": [None] * n}
    gpu = {"kind": "power_samples", "device": "cuda:0", "component": "gpu", "source": "counter", "t_s": [1.0, 2.0],
           "power_w": [float("nan"), 250.0], "sm_clock_mhz": [1980, 1410]}
    proc = RawProcessRecords(path=P("process-0.jsonl"), header={"process_index": 0, "hostname": "h", "t0_unix_s": 1_700_000_000.0},
                             phases=[], other=[cpu, gpu])
    points = system_series([proc])
    keys = {p.key for p in points}
    assert keys == {"system/cpu/power_w_estimated", "system/cuda_0/power_w", "system/cuda_0/sm_clock_mhz"}  # no empty series
    est = [p for p in points if p.key == "system/cpu/power_w_estimated"]
    assert len(est) <= MAX_POINTS and len(est) > MAX_POINTS // 2
    assert sum(p.value for p in est[:-1]) / (len(est) - 1) == pytest.approx(20.0)  # bucket means keep the level (and the energy)
    assert all(a.step_ms < b.step_ms for a, b in itertools.pairwise(est))
    assert est[0].timestamp_ms == 1_700_000_000_000 + est[0].step_ms
    assert [(p.step_ms, p.value) for p in points if p.key == "system/cuda_0/power_w"] == [(2000, 250.0)]  # NaN left out


def test_one_name_per_quantity_and_no_timestamps_or_config_echoes() -> None:
    """A summary shaped like a real one: each quantity once, no config echoes or clock readings, estimates apart only when apart."""
    from lem.tracking.metrics import HEADLINE_METRICS, summary_metrics

    phase = {"wall_s": 2.0, "energy_j": 100.0, "energy_source": "counter", "net_energy_j": 60.0, "measured_energy_j": 100.0,
             "estimated_energy_j": 30.0, "partial_energy_j": None,
             "energy_by_component": [{"component": "gpu", "source": "counter", "energy_j": 100.0}]}
    summary = {
        "n_requests": 8, "warnings": ["w"],
        "run": {"started_unix_s": 1.7e9, "num_threads": 2, "world_size": 1},
        "tokens": {"input_tokens": 80, "output_tokens": 40, "total_tokens": 120, "token_ids": {"records_with_token_ids": 8}},
        "throughput": {"generation_wall_s": 2.0, "output_tokens_per_s": 20.0, "total_tokens_per_s": 60.0},
        "latency": {"ttft_ms": {"mean": 5.0, "p50": 4.0, "p99": 9.0, "n": 8}, "tpot_ms": {"p50": 3.0, "p99": 7.0}},
        "energy": {"generation_energy_j": 100.0, "source": "counter", "j_per_output_token": 2.5, "net_j_per_output_token": 1.5,
                   "output_tokens_per_j": 0.4, "measured_j_per_output_token": 2.5, "estimated_j_per_output_token": 0.75,
                   "net_generation_energy_j": 60.0, "all_phases_energy_j": 100.0, "run_energy_j": 110.0, "phase_sum_fraction": 0.9,
                   "by_component": [{"component": "gpu", "source": "counter", "energy_j": 100.0, "j_per_output_token": 2.5}],
                   "idle_baseline": {"duration_s": 5.0, "oldest_measured_unix_s": 1.7e9, "settle_s": 1.0},
                   "steady_state": {"start_s": 10.0, "end_s": 12.0, "wall_s": 2.0, "j_per_output_token": 2.4},
                   "co2": {"pue": 1.2, "carbon_intensity_g_per_kwh": 400.0, "co2_g": 0.01},
                   "codecarbon": {"cpu_tdp_w": 8.0, "start_s": 1.2}},
        "phases": {"generation": phase, "idle_baseline": {**phase, "net_energy_j": 0.0}},
        "flops": {"total_flops": 1e12, "peak_flops_per_s": 1e15, "n_devices": 1, "executed_prefill_share": 0.8, "mfu": 0.01},
        "batching": {"strategy": "static", "batch_size": 8, "max_tokens_per_batch": 4096, "n_batches": 1, "mean_batch_size": 8.0},
        "traffic": {"arrival": "poisson", "target_qps": 2.0, "achieved_qps": 1.9},
        "cycles": {"n_cycles": 3, "stats": {"j_per_output_token": {"mean": 2.5, "ci95_low": 2.3, "ci95_high": 2.7}}},
    }
    m = summary_metrics(summary)
    assert {k: m[k] for k in HEADLINE_METRICS if k in m} == {
        "headline/j_per_output_token": 2.5, "headline/net_j_per_output_token": 1.5, "headline/output_tokens_per_s": 20.0,
        "headline/ttft_ms_p50": 4.0, "headline/ttft_ms_p99": 9.0, "headline/tpot_ms_p50": 3.0}
    values = [v for k, v in m.items() if k != "run/n_warnings"]
    assert m["energy/phase/generation_j"] == 100.0 and values.count(100.0) == 2  # generation and idle_baseline phases, once each
    assert m["energy/phase/generation_net_j"] == 60.0 and "energy/phase/idle_baseline_net_j" not in m
    assert m["energy/estimated_j_per_output_token"] == 0.75 and m["energy/phase/generation_estimated_j"] == 30.0  # apart from measured
    assert m["traffic/achieved_qps"] == 1.9 and m["flops/mfu"] == 0.01 and m["energy/steady_state/j_per_output_token"] == 2.4
    assert m["cycles/j_per_output_token_ci95_low"] == 2.3 and m["cycles/n_cycles"] == 3
    assert m["time/phase/generation_s"] == 2.0 and values.count(2.0) == 3  # the phase, steady-state window and idle phase walls
    for gone in ("throughput/generation_wall_s", "energy/generation_energy_j", "energy/net_generation_energy_j",
                 "energy/output_tokens_per_j", "energy/all_phases_energy_j", "energy/phase_sum_fraction", "tokens/total_tokens",
                 "batching/batch_size", "batching/max_tokens_per_batch", "energy/co2/pue", "energy/co2/carbon_intensity_g_per_kwh",
                 "flops/peak_flops_per_s", "flops/n_devices", "flops/executed_prefill_share", "energy/steady_state/start_s",
                 "energy/idle_baseline/oldest_measured_unix_s", "energy/codecarbon/cpu_tdp_w", "energy/component/gpu_j",
                 "energy/phase/generation/gpu_j", "energy/phase/generation_measured_j", "run/num_threads"):
        assert gone not in m, gone
    assert not [k for k in m if "unix" in k or k.startswith(("energy/codecarbon/", "energy/idle_baseline/", "run/world"))]

    estimated = summary_metrics({**summary, "energy": {**summary["energy"], "source": "estimated"},
                                 "phases": {"generation": {**phase, "energy_source": "estimated", "estimated_energy_j": 100.0}}})
    assert "energy/estimated_j_per_output_token" not in estimated and "energy/phase/generation_estimated_j" not in estimated
    assert estimated["headline/j_per_output_token"] == 2.5  # an estimate keeps the name; lem.energy_source says which
