"""``lem plan``: every job of a sweep before it runs — refusals with their reason, duplicates after resolution."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lem.config.schema import BackendName, LemConfig
from lem.config.types import ArrivalProcess
from lem.study.identity import differences, effective_settings, run_key, settings_key
from tests.lem_cli import run_lem
from tests.tiny_model import make_tiny_model_dir

FAST = ["backend.pytorch.num_threads=1", "energy.idle_baseline_s=0", "tracking.enabled=false", "flops.strategy=analytical",
        "dataset.max_output_tokens=4"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def test_settings_that_cannot_change_the_measurement_do_not_change_its_identity() -> None:
    base = LemConfig()
    base.dataset.n_prompts = 4
    same = LemConfig()
    same.dataset.n_prompts = 4
    same.batching.batch_size = 64  # capped by the 4 prompts, as is 8
    same.decoder.temperature = 0.3  # greedy: no effect
    same.traffic.target_qps = 5.0  # offline: no effect
    same.report.progress = same.report.progress.off
    same.tracking.enabled = False
    same.backend.vllm.gpu_memory_utilization = 0.5  # another engine's options
    same.run.job_timeout_s = 60.0
    assert settings_key(base) == settings_key(same)
    assert run_key(base) == run_key(same)
    other = LemConfig()
    other.dataset.n_prompts = 4
    other.batching.batch_size = 2  # a smaller batch than the prompts: another measurement
    assert settings_key(other) != settings_key(base)
    assert differences(effective_settings(base), effective_settings(other)) == ["batching.batch_size: 4 → 2"]
    poisson = replace(base, traffic=replace(base.traffic, arrival=ArrivalProcess.poisson, target_qps=5.0))
    assert settings_key(poisson) != settings_key(base)
    assert settings_key(replace(base, cycles=3)) == settings_key(base) and run_key(replace(base, cycles=3)) != run_key(base)
    vllm = replace(base, backend=replace(base.backend, name=BackendName["vllm"]))
    assert settings_key(vllm) != settings_key(base)


def test_lem_plan_names_refused_and_duplicate_jobs_and_writes_nothing(tiny_model: Path, tmp_path: Path) -> None:
    args = ["plan", "-m", f"model.name_or_path={tiny_model}", "dataset.n_prompts=4", "batching.batch_size=0,2,4,8", "cycles=3", *FAST]
    result = run_lem(args, tmp_path, timeout_s=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines[1:5]}
    assert "refused" in rows["0"] and "run" in rows["1"] and "run" in rows["2"]
    assert "= job 2" in rows["3"]  # batch 8 of 4 prompts is batch 4: measured once
    assert "job 0 refused: batching.batch_size=0: expected a number >= 1" in lines
    assert "4 configurations declared → 1 refused → 1 duplicate → 2 × 3 cycles = 2 jobs (grouped)" in lines
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # a plan writes nothing


def test_lem_plan_json_lays_out_spread_cycles_in_the_seeded_order(tiny_model: Path, tmp_path: Path) -> None:
    args = ["plan", f"model.name_or_path={tiny_model}", "dataset.n_prompts=4", "batching.batch_size=1,2,4", "cycles=2",
            "study.order=shuffled", "study.seed=5", "--json", *FAST]
    first, second = (run_lem(args, tmp_path, timeout_s=120) for _ in range(2))
    assert first.returncode == 0, first.stderr
    plan = json.loads(first.stdout)
    assert plan == json.loads(second.stdout)  # the same seed, the same order
    visits = [(v["point"], v["cycle"]) for v in plan["visits"]]
    assert sorted(visits) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [v["job"] for v in plan["visits"]] == list(range(6))  # each cycle its own job, numbered in run order
    other = json.loads(run_lem([a if a != "study.seed=5" else "study.seed=6" for a in args], tmp_path, timeout_s=120).stdout)
    assert sorted((v["point"], v["cycle"]) for v in other["visits"]) == sorted(visits)


def test_lem_plan_with_nothing_to_run_exits_2(tiny_model: Path, tmp_path: Path) -> None:
    result = run_lem(["plan", f"model.name_or_path={tiny_model}", "batching.batch_size=0,-1", *FAST], tmp_path, timeout_s=120)
    assert result.returncode == 2
    assert "2 configurations declared → 2 refused" in result.stdout


def test_a_swept_study_setting_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run_lem(["plan", "study.order=grouped,shuffled", *FAST], tmp_path, timeout_s=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["lem: error: study.order: one value for the whole study, not a sweep (study.order=grouped,shuffled)"]
