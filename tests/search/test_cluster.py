"""Sweeps through real launchers (submitit's local executor, joblib): every job a child of the sweep's
parent run; the parent id reaches jobs in other processes; parallel jobs never share a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lem.launch import guard as launch_guard
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def sweep(tmp_path: Path, tiny_model: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    for key in ("LEM_MLFLOW_PARENT_RUN_ID", "LEM_SWEEP_ID", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    cmd = [
        sys.executable, "-m", "lem", "-m", f"model.name_or_path={tiny_model}", "backend.device=cpu",
        "dataset.n_prompts=2,3", "dataset.max_output_tokens=4", "energy.idle_baseline_s=0", "flops.strategy=analytical",
        "backend.pytorch.num_threads=1", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"hydra.sweep.dir={tmp_path}/sweep", *overrides,
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def runs(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("lem")
    return list(client.search_runs([experiment.experiment_id])) if experiment else []


def assert_children_under_one_parent(tmp_path: Path) -> None:
    all_runs = runs(tmp_path)
    parents = [r for r in all_runs if r.data.tags.get("lem.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2 == len(all_runs) - 1
    assert sorted(r.data.tags["lem.job_num"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in children)
    pids = {json.loads((tmp_path / "sweep" / str(i) / "raw" / "process-0.jsonl").read_text().splitlines()[0])["pid"] for i in (0, 1)}
    assert len(pids) == 2  # each job measured in its own (worker) process
    sweep_file = json.loads((tmp_path / "sweep" / ".lem_sweep.json").read_text())
    assert sweep_file["parent_run_id"] == parents[0].info.run_id  # jobs on other nodes find their parent here


def test_submitit_local_executor_jobs_land_under_the_sweep_parent(tiny_model: Path, tmp_path: Path) -> None:
    result = sweep(tmp_path, tiny_model, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_children_under_one_parent(tmp_path)
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # real submitit jobs, not in-process calls
    assert "share the cores" in result.stderr  # parallel CPU jobs are flagged


def test_joblib_launcher_jobs_land_under_the_sweep_parent(tiny_model: Path, tmp_path: Path) -> None:
    result = sweep(tmp_path, tiny_model, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_children_under_one_parent(tmp_path)


def test_parallel_jobs_that_would_share_a_gpu_are_refused_before_any_job(tiny_model: Path, tmp_path: Path) -> None:
    result = sweep(tmp_path, tiny_model, "hydra/launcher=parallel", "backend.device=cuda", "run.gpu_lease=false", timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("lem: error:")]
    assert len(errors) == 1 and "would share a GPU" in errors[0] and "run.gpu_lease=false" in errors[0]
    assert runs(tmp_path) == [] and not (tmp_path / "sweep" / "0").exists()  # nothing started, nothing logged


def _config(launcher: dict, device: str = "auto", lease: bool = True, isolation: str = "worker", task: list[str] | None = None):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "backend": {"device": device}, "run": {"gpu_lease": lease, "isolation": isolation},
        "hydra": {"launcher": launcher, "overrides": {"task": task or []}},
    })


JOBLIB = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}


def test_guard_rules() -> None:
    basic = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
    slurm = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}
    assert launch_guard.check(_config(basic, "cuda", lease=False), gpus_visible=8) is None  # one job at a time
    assert launch_guard.check(_config(slurm, "cuda", lease=False), gpus_visible=8) is None  # SLURM allocates GPUs per job
    assert launch_guard.check(_config(JOBLIB, "cuda"), gpus_visible=8) is None  # each job leases its own GPU
    assert "share the cores" in launch_guard.check(_config(JOBLIB, "cpu"), gpus_visible=8)
    assert "share the cores" in launch_guard.check(_config(JOBLIB, "auto"), gpus_visible=0)  # auto on a CPU machine
    with pytest.raises(Exception, match="run.isolation=inline"):
        launch_guard.check(_config(JOBLIB, "auto", isolation="inline"), gpus_visible=1)
    with pytest.raises(Exception, match="run.gpu_lease=false"):  # a swept device that includes CUDA counts
        launch_guard.check(_config(JOBLIB, "cpu", lease=False, task=["backend.device=cpu,cuda"]), gpus_visible=1)
    assert launch_guard.parallel_jobs({**JOBLIB, "n_jobs": 1}) == 1
    assert launch_guard.parallel_jobs({**JOBLIB, "n_jobs": -1}) == os.cpu_count()


def test_two_workers_share_one_study(tiny_model: Path, tmp_path: Path) -> None:
    """Two `python -m lem -m hparams_search=...` processes on one SQLite study (a cluster's shared storage)."""
    import optuna
    from optuna.trial import TrialState

    from tests.search.test_optuna_sweeper import study_command

    storage = f"sqlite:///{tmp_path}/shared-optuna.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for key in ("HYDRA_FULL_ERROR", "LEM_MLFLOW_PARENT_RUN_ID", "LEM_SWEEP_ID"):
        env.pop(key, None)
    workers = []
    for i in range(2):
        cmd = study_command(
            tmp_path / "study", tiny_model, "min_energy", "hydra.sweeper.n_trials=6", f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.sampler.seed=null", store=tmp_path / f"mlflow-{i}.db",
        )
        workers.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [w.communicate(timeout=900) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name="min_energy", storage=storage)
    trials = study.get_trials()
    from lem.search.study import is_measured

    measured = [t for t in trials if is_measured(t)]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # no trial number handed out twice
    assert len(measured) == 6 and all(t.state == TrialState.COMPLETE for t in measured)  # the study's total, not each worker's
    by_worker = {t.user_attrs["lem.worker"]["pid"] for t in measured}
    assert len(by_worker) == 2  # both workers pulled trials from the one study
    for t in measured:  # job N is trial N, in the shared sweep folder
        assert (tmp_path / "study" / str(t.number) / "summary.json").is_file()
