"""Optuna studies (``hparams_search=min_energy|pareto``): the search space, the study loop, and whole studies end to end.

The loop tests drive ``lem.search.study.run_study`` with a fake launcher (no model, fast);
the end-to-end tests run ``python -m lem -m hparams_search=...`` on a tiny random-weight model
in a subprocess and read the Optuna storage and the MLflow store afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_model import make_tiny_model_dir

optuna = pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parents[2]


# --- the search space ------------------------------------------------------------------------


def test_sweep_syntax_becomes_optuna_distributions() -> None:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    from lem.search.space import parse_search_space

    space, fixed = parse_search_space([
        "batching.batch_size=choice(1, 2, 4)",
        "decoder=choice(deterministic, creative)",
        "dataset.max_output_tokens=range(16, 64, 16)",
        "decoder.temperature=interval(0.1, 1.5)",
        "batching.max_tokens_per_batch=tag(log, int(interval(256, 8192)))",
        "decoder.top_p=tag(log, interval(0.5, 1.0))",
        "precision.dtype=choice(float32, bfloat16)",
        "precision.dtype=bfloat16",  # a later plain value fixes the key: it leaves the search
    ])
    assert space["batching.batch_size"] == CategoricalDistribution((1, 2, 4))
    assert space["decoder"] == CategoricalDistribution(("deterministic", "creative"))
    assert space["dataset.max_output_tokens"] == IntDistribution(16, 48, step=16)  # range excludes its stop
    assert space["decoder.temperature"] == FloatDistribution(0.1, 1.5)
    assert space["batching.max_tokens_per_batch"] == IntDistribution(256, 8192, log=True)
    assert space["decoder.top_p"] == FloatDistribution(0.5, 1.0, log=True)
    assert "precision.dtype" not in space and fixed == {"precision.dtype": "bfloat16"}


def test_sampled_values_become_valid_overrides() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lem.search.space import trial_overrides

    overrides = trial_overrides({"a": "x,y", "b": True, "c": 0.25, "d": "plain_value", "e": "it's"}, {"model.name_or_path": "/m", "a": "ignored"})
    assert overrides == ["model.name_or_path=/m", "a='x,y'", "b=true", "c=0.25", "d=plain_value", "e='it\\'s'"]
    parsed = OverridesParser.create().parse_overrides(overrides)
    assert [o.value() for o in parsed] == ["/m", "x,y", True, 0.25, "plain_value", "it's"]
    assert not any(o.is_sweep_override() for o in parsed)


def test_bad_space_is_one_line_error() -> None:
    from lem.errors import LemError
    from lem.search.space import parse_search_space

    with pytest.raises(LemError, match="log-scale interval needs low > 0"):
        parse_search_space(["x=tag(log, interval(0, 1))"])
    with pytest.raises(LemError, match="cannot parse"):
        parse_search_space(["x=choice(1,"])


# --- the study loop with a fake launcher ---------------------------------------------------------


def _settings(tmp_path: Path, **kw: Any) -> Any:
    from lem.search.settings import StudySettings

    base = dict(
        study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db", directions=["minimize"],
        objectives=["energy.j_per_output_token"], n_trials=4, max_failure_rate=0.5,
    )
    base.update(kw)
    return StudySettings(**base)


class FakeLaunch:
    """Stands in for Hydra's launcher: J/token = 1/batch size, optional failures and latencies."""

    def __init__(self, fail_when: Any = None, ttft_ms: Any = None) -> None:
        self.calls: list[tuple[int, list[str]]] = []
        self.fail_when = fail_when or (lambda overrides: False)
        self.ttft_ms = ttft_ms or (lambda bs: 10.0)

    def __call__(self, batch: list[tuple[int, list[str]]]) -> list[Any]:
        from lem.search.settings import TrialOutcome

        out = []
        for number, overrides in batch:
            self.calls.append((number, overrides))
            if self.fail_when(overrides):
                out.append(TrialOutcome(error="RuntimeError: out of memory"))
                continue
            bs = int(next(o for o in overrides if o.startswith("batching.batch_size=")).split("=")[1])
            out.append(TrialOutcome(metrics={
                "energy.j_per_output_token": 1.0 / bs, "throughput.output_tokens_per_s": 10.0 * bs,
                "latency.ttft_ms.p99": self.ttft_ms(bs), "latency.tpot_ms.p99": 5.0,
            }))
        return out


def _space(*sizes: int) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution

    return {"batching.batch_size": CategoricalDistribution(sizes or (1, 2, 4, 8))}


def test_study_measures_n_trials_and_finds_the_best(tmp_path: Path) -> None:
    from lem.search.report import best_trials
    from lem.search.study import run_study

    launch = FakeLaunch()
    settings = _settings(tmp_path, n_trials=4)
    result = run_study(settings, _space(), {"model.name_or_path": "/m"}, launch, sampler_cfg={"_target_": "optuna.samplers.RandomSampler", "seed": 0}, echo=lambda _: None)
    # Four distinct configurations, each measured once, jobs numbered by trial.
    assert len(launch.calls) == 4
    assert sorted(o[-1] for _, o in launch.calls) == [f"batching.batch_size={b}" for b in (1, 2, 4, 8)]
    assert all(o[0] == "model.name_or_path=/m" for _, o in launch.calls)
    best = best_trials(result.study, settings)
    assert [t.params for t in best] == [{"batching.batch_size": 8}]
    assert result.stopped is None


def test_duplicates_reuse_results_and_a_small_space_is_exhausted(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from lem.search.settings import ATTR_DUPLICATE_OF
    from lem.search.study import run_study

    launch = FakeLaunch()
    result = run_study(_settings(tmp_path, n_trials=10), _space(1, 2), {}, launch, sampler_cfg={"_target_": "optuna.samplers.TPESampler", "seed": 1}, echo=lambda _: None)
    assert len(launch.calls) == 2  # two configurations: each measured once, not ten times
    assert "every one of the 2 configurations" in (result.stopped or "")
    dups = [t for t in result.study.trials if ATTR_DUPLICATE_OF in t.user_attrs]
    for t in dups:
        original = result.study.trials[t.user_attrs[ATTR_DUPLICATE_OF]]
        assert t.state == TrialState.COMPLETE and t.values == original.values and t.params == original.params


def test_grid_sampler_measures_each_configuration_once(tmp_path: Path) -> None:
    from lem.search.study import run_study

    launch = FakeLaunch()
    # The preset's TPE-only key (n_startup_trials) must not stop another sampler from the command line.
    sampler = {"_target_": "optuna.samplers.GridSampler", "seed": 0, "n_startup_trials": 5}
    result = run_study(_settings(tmp_path, n_trials=100), _space(1, 2, 4), {}, launch, sampler_cfg=sampler, echo=lambda _: None)
    assert sorted(o[-1] for _, o in launch.calls) == ["batching.batch_size=1", "batching.batch_size=2", "batching.batch_size=4"]
    assert len(result.study.trials) == 3


def test_failed_trials_are_recorded_and_the_study_goes_on_until_the_budget(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from lem.search.settings import ATTR_ERROR
    from lem.search.study import is_measured, run_study

    fails = lambda overrides: "batching.batch_size=8" in overrides or "batching.batch_size=4" in overrides  # noqa: E731
    # Budget 0.5 x 4 trials = 2 failures allowed: all four configurations are measured.
    launch = FakeLaunch(fail_when=fails)
    result = run_study(_settings(tmp_path, n_trials=4, max_failure_rate=0.5), _space(), {}, launch, sampler_cfg={"_target_": "optuna.samplers.RandomSampler", "seed": 0}, echo=lambda _: None)
    measured = [t for t in result.study.trials if is_measured(t)]
    states = [t.state for t in measured]
    assert len(launch.calls) == 4 and states.count(TrialState.FAIL) == 2 and states.count(TrialState.COMPLETE) == 2
    assert all("out of memory" in t.user_attrs[ATTR_ERROR] for t in measured if t.state == TrialState.FAIL)
    assert result.stopped is None

    # Budget 0.2 x 4 = 0.8: the first failure stops the study, with a reason naming the key.
    launch = FakeLaunch(fail_when=lambda overrides: True)
    result = run_study(_settings(tmp_path, study_name="s2", n_trials=4, max_failure_rate=0.2), _space(), {}, launch, sampler_cfg={"_target_": "optuna.samplers.RandomSampler", "seed": 0}, echo=lambda _: None)
    assert len(launch.calls) == 1 and "max_failure_rate=0.2" in (result.stopped or "")


def test_latency_limits_make_trials_infeasible(tmp_path: Path) -> None:
    from lem.search.report import best_trials, study_rows
    from lem.search.settings import TTFT_P99_MS
    from lem.search.study import run_study

    # Bigger batches: less J/token, more tokens/s, but a TTFT over the limit from batch 4 on.
    launch = FakeLaunch(ttft_ms=lambda bs: 100.0 * bs)
    settings = _settings(tmp_path, n_trials=4, directions=["minimize", "maximize"],
                         objectives=["energy.j_per_output_token", "throughput.output_tokens_per_s"], limits={TTFT_P99_MS: 250.0})
    result = run_study(settings, _space(), {}, launch, sampler_cfg={"_target_": "optuna.samplers.TPESampler", "seed": 0}, echo=lambda _: None)
    rows = {r["params"]["batching.batch_size"]: r for r in study_rows(result.study, settings)}
    assert {bs: r["feasible"] for bs, r in rows.items()} == {1: True, 2: True, 4: False, 8: False}
    front = best_trials(result.study, settings)
    assert [t.params["batching.batch_size"] for t in front] == [2]  # 4 and 8 dominate it but are infeasible
    assert {t.params["batching.batch_size"] for t in result.study.best_trials} == {2}  # Optuna agrees (it also lists repeats)


def test_the_studys_verdict_lists_every_trial_with_its_status_and_names_the_best(tmp_path: Path) -> None:
    from lem.search.report import format_summary, study_rows
    from lem.search.settings import TTFT_P99_MS
    from lem.search.study import run_study
    from lem.search.verdict import best_row, verdict_rows
    from lem.tracking.html_report import sweep_report_html

    # batch 1 fails, 4 and 8 break the TTFT limit: batch 2 is the only feasible trial, and the best
    launch = FakeLaunch(fail_when=lambda overrides: "batching.batch_size=1" in overrides, ttft_ms=lambda bs: 100.0 * bs)
    settings = _settings(tmp_path, n_trials=4, limits={TTFT_P99_MS: 250.0})
    result = run_study(settings, _space(), {}, launch, sampler_cfg={"_target_": "optuna.samplers.TPESampler", "seed": 0}, echo=lambda _: None)
    rows = verdict_rows(study_rows(result.study, settings, measured_only=False), settings)
    status = {r["swept"]["batching.batch_size"]: r["status"] for r in rows if r["status"] != "duplicate"}
    assert status == {"1": "failed", "2": "completed", "4": "infeasible", "8": "infeasible"}
    assert all(rows[r["duplicate_of"]]["swept"] == r["swept"] for r in rows if r["status"] == "duplicate")
    best = best_row(rows, [next(r["num"] for r in rows if r["status"] == "completed")])
    assert best is not None and best["swept"] == {"batching.batch_size": "2"}

    text = format_summary(result.study, settings, result.stopped)
    table = [line.split() for line in text.splitlines() if re.match(r"\s+#\d", line)]
    assert [cells[1] for cells in table] == ["8", "4", "2", "1"]  # J/token 1/bs, the failed trial last
    assert [cells[-1] == "*" for cells in table] == [cells[1] == "2" for cells in table]  # the front: feasible trials only
    assert "infeasible" in text and f"best trial {best['label']} (minimize J/token): batching.batch_size=2" in text

    page = sweep_report_html(rows, title="study", best=best, what="trial")
    assert page.count("<tr class=") == len(rows)  # the report lists every duplicate too
    assert page.count('class="infeasible"') == sum(r["status"] == "infeasible" for r in rows) and 'class="completed best"' in page


def test_resume_counts_finished_trials_and_fails_stale_ones(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from lem.search.settings import ATTR_DUPLICATE_OF, ATTR_INTERRUPTED, ATTR_WORKER
    from lem.search.storage import open_study
    from lem.search.study import run_study

    sampler = {"_target_": "optuna.samplers.RandomSampler", "seed": 0}
    space = _space(1, 2, 4, 8, 16, 32)
    first = FakeLaunch()
    run_study(_settings(tmp_path, n_trials=2), space, {}, first, sampler_cfg=sampler, echo=lambda _: None)
    # A process killed mid-trial leaves it RUNNING; mark one as this host's, with a dead pid.
    study = open_study(_settings(tmp_path, n_trials=2), sampler, space)
    stale = study.ask(fixed_distributions=space)
    stale.set_user_attr(ATTR_WORKER, {"host": __import__("socket").gethostname(), "pid": 2**22 + 12345})

    second = FakeLaunch()
    result = run_study(_settings(tmp_path, n_trials=5), space, {}, second, sampler_cfg=sampler, echo=lambda _: None)
    trials = result.study.trials
    assert trials[stale.number].state == TrialState.FAIL and trials[stale.number].user_attrs[ATTR_INTERRUPTED]
    measured = [t for t in trials if t.state == TrialState.COMPLETE and ATTR_DUPLICATE_OF not in t.user_attrs]
    assert len(measured) == 5 and len(first.calls) == 2 and len(second.calls) == 3
    assert not {n for n, _ in first.calls} & {n for n, _ in second.calls}


_KILLED_AFTER_ASK = """
import os, signal, sys
import optuna
from optuna.distributions import CategoricalDistribution
from lem.search.storage import _ask
study = optuna.load_study(study_name="s", storage=sys.argv[1])
_ask(study, {"batching.batch_size": CategoricalDistribution((1, 2, 4, 8, 16, 32))})
os.kill(os.getpid(), signal.SIGKILL)  # the trial is RUNNING: killed before anything else is written
"""

_ASKS = """
import sys
import optuna
from optuna.distributions import CategoricalDistribution
from lem.search.storage import _ask, _open_storage
study = optuna.load_study(study_name="s", storage=_open_storage(sys.argv[1]))
space = {"batching.batch_size": CategoricalDistribution((1, 2, 4, 8, 16, 32))}
print(" ".join(str(_ask(study, space).number) for _ in range(int(sys.argv[2]))))
"""


def test_workers_asking_at_once_never_get_the_same_trial(tmp_path: Path) -> None:
    """Several workers on one SQLite study ask together: each trial goes to one worker, named after it."""
    import optuna

    from lem.search.settings import ATTR_WORKER

    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="s", storage=storage)
    workers = [
        subprocess.Popen([sys.executable, "-c", _ASKS, storage, "15"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    numbers_by_pid = {}
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]
        numbers_by_pid[w.pid] = [int(n) for n in out.split()]
    every_number = [n for numbers in numbers_by_pid.values() for n in numbers]
    assert len(every_number) == 60 and len(set(every_number)) == 60
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert len(trials) == 60
    for pid, numbers in numbers_by_pid.items():
        assert {trials[n].user_attrs[ATTR_WORKER]["pid"] for n in numbers} == {pid}
        assert all(set(trials[n].params) == {"batching.batch_size"} for n in numbers)


class _StudyWithoutInternals:
    """A study as an Optuna without ``_storage``/``_study_id``/``_thread_local`` would show it to ``_ask``."""

    def __init__(self, study: Any) -> None:
        self.ask = study.ask


@pytest.mark.parametrize("internals", [True, False], ids=["one-insert", "fallback-ask"])
def test_an_asked_trial_is_running_named_and_suggested_with_or_without_optunas_internals(
    internals: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    from lem.search.settings import ATTR_WORKER
    from lem.search.storage import _ask

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = {
        "batching.batch_size": CategoricalDistribution((1, 2, 4)),
        "decoder.max_new_tokens": IntDistribution(8, 64, step=8),
        "traffic.rate": FloatDistribution(0.5, 8.0, log=True),
    }
    if internals:  # the one-insert path must not go through ``ask`` (it would pop WAITING trials)
        monkeypatch.setattr(study, "ask", lambda *a, **k: pytest.fail("_ask called study.ask"))
        trial = _ask(study, space)
    else:
        trial = _ask(_StudyWithoutInternals(study), space)
    frozen = study.trials[trial.number]
    assert frozen.state == optuna.trial.TrialState.RUNNING
    assert frozen.user_attrs[ATTR_WORKER] == {"host": __import__("socket").gethostname(), "pid": os.getpid()}
    assert frozen.params["batching.batch_size"] in (1, 2, 4)
    assert frozen.params["decoder.max_new_tokens"] in range(8, 65, 8)
    assert 0.5 <= frozen.params["traffic.rate"] <= 8.0
    assert frozen.distributions == space


def test_a_worker_killed_right_after_ask_leaves_no_trial_that_counts_for_ever(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from lem.search.settings import ATTR_DUPLICATE_OF, ATTR_INTERRUPTED
    from lem.search.study import run_study

    sampler = {"_target_": "optuna.samplers.RandomSampler", "seed": 0}
    space = _space(1, 2, 4, 8, 16, 32)
    run_study(_settings(tmp_path, n_trials=1), space, {}, FakeLaunch(), sampler_cfg=sampler, echo=lambda _: None)
    killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_ASK, f"sqlite:///{tmp_path}/optuna.db"], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    result = run_study(_settings(tmp_path, n_trials=3), space, {}, FakeLaunch(), sampler_cfg=sampler, echo=lambda _: None)
    trials = result.study.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE and ATTR_DUPLICATE_OF not in t.user_attrs]
    assert len(complete) == 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs[ATTR_INTERRUPTED]  # the killed process's, not counted


def test_a_study_refuses_a_different_workload(tmp_path: Path) -> None:
    from lem.errors import LemError
    from lem.search.storage import open_study

    open_study(_settings(tmp_path, identity=["model.name_or_path=/a"]), None, _space())
    with pytest.raises(LemError, match="measured the workload .*model.name_or_path=/a.*use another"):
        open_study(_settings(tmp_path, identity=["model.name_or_path=/b"]), None, _space())
    with pytest.raises(LemError, match="was run with none; use another hydra.sweeper.study_name"):
        open_study(_settings(tmp_path, identity=["model.name_or_path=/a"], limits={"latency.ttft_ms.p99": 500.0}), None, _space())


# --- whole studies, end to end ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the module's studies (a new store's migrations cost seconds)."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


def study_command(sweep_dir: Path, model: Path | str, preset: str, *overrides: str, store: Path) -> list[str]:
    defaults = [
        f"model.name_or_path={model}",
        f"hydra.sweep.dir={sweep_dir}",
        f"tracking.tracking_uri=sqlite:///{store}",
        "backend.pytorch.num_threads=1",
        "energy.idle_baseline_s=0",
        "flops.strategy=analytical",  # skips calflops' subprocess
        "dataset.n_prompts=4",
        "dataset.max_output_tokens=4",
        # Engine settings fixed: the study searches runtime knobs only (one model load).
        "precision.dtype=float32",
        "backend.pytorch.attn_implementation=sdpa",
        "batching=static",
    ]
    given = {o.split("=", 1)[0] for o in overrides}
    return [sys.executable, "-m", "lem", "-m", f"hparams_search={preset}", *[d for d in defaults if d.split("=", 1)[0] not in given], *overrides]


def run_study_cli(cmd: list[str], cwd: Path, timeout_s: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("LEM_MLFLOW_PARENT_RUN_ID", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def load(sweep_dir: Path, name: str) -> Any:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def mlflow_runs(store: Path) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("lem")
    return list(client.search_runs([exp.experiment_id], max_results=1000))


@pytest.fixture(scope="module")
def min_energy_study(tiny_model: Path, store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("min-energy")
    sweep_dir = root / "study"
    result = run_study_cli(study_command(sweep_dir, tiny_model, "min_energy", "hydra.sweeper.n_trials=6", store=store), root)
    return sweep_dir, result


def test_min_energy_study_completes_and_writes_its_best_trial(min_energy_study: tuple[Path, subprocess.CompletedProcess], store: Path) -> None:
    from optuna.trial import TrialState

    sweep_dir, result = min_energy_study
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir, "min_energy")
    measured = [t for t in study.trials if "lem.duplicate_of" not in t.user_attrs]
    assert len(measured) == 6 and all(t.state == TrialState.COMPLETE for t in measured)
    # The objective is each job's J/token from its own summary.json.
    for t in measured:
        summary = json.loads((sweep_dir / str(t.number) / "summary.json").read_text())
        assert t.values == [summary["energy"]["j_per_output_token"]]
    best = min(measured, key=lambda t: t.values[0])
    assert study.best_trial.number == best.number
    assert "best trial" in result.stdout and f"#{best.number}" in result.stdout

    # MLflow: the parent holds the study's summary; each child names its trial and vice versa.
    runs = mlflow_runs(store)
    parent = next(r for r in runs if r.data.tags.get("lem.sweep_dir") == str(sweep_dir) and r.data.tags.get("lem.kind") == "sweep")
    assert parent.data.tags["lem.optuna.study_name"] == "min_energy"
    assert parent.data.tags["lem.optuna.best_trials"] == str(best.number)
    assert parent.data.metrics["optuna/best/energy/j_per_output_token"] == pytest.approx(best.values[0])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    artifacts = {a.path for d in ("optuna", "study") for a in client.list_artifacts(parent.info.run_id, d)}
    assert {"optuna/study.json", "optuna/pareto_front.png", "optuna/optimization_history.png", "optuna/param_importances.png", "study/trials.csv"} <= artifacts
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    for t in measured:
        child = children[t.user_attrs["mlflow_run_id"]]
        assert child.data.tags["lem.optuna.trial_number"] == str(t.number)

    # The parent means what it says: the search space as params, the best trial's headline as metrics.
    from lem.tracking.metrics import HEADLINE_METRICS
    from lem.tracking.parent_verdict import OLD_NAMES

    assert parent.data.params["batching.batch_size"] == "choice(1, 2, 4, 8, 16)"
    assert parent.data.params["decoder"] == "choice(deterministic, creative)"
    assert parent.data.params["optuna.objectives"] == "energy.j_per_output_token" and parent.data.params["optuna.n_trials"] == "6"
    assert "dataset.name" not in parent.data.params and "backend.pytorch.num_threads" in parent.data.params  # a fixed override, no default
    best_child = children[best.user_attrs["mlflow_run_id"]]
    assert parent.data.tags["lem.best_run_id"] == best_child.info.run_id and parent.data.tags["lem.best_job_num"] == str(best.number)
    for name in HEADLINE_METRICS:
        value = best_child.data.metrics.get(name, best_child.data.metrics.get(OLD_NAMES[name]))
        if value is not None:
            assert parent.data.metrics[name] == pytest.approx(value), name
    assert parent.data.metrics["headline/j_per_output_token"] == pytest.approx(best.values[0])
    assert not any(k.startswith("optuna/trials/") for k in parent.data.metrics)  # no series whose last value passes for the study's
    assert f"best trial #{best.number} (minimize J/token)" in parent.data.tags["mlflow.note.content"]
    page = Path(client.download_artifacts(parent.info.run_id, "sweep/report.html", str(sweep_dir.parent / "dl"))).read_text()
    assert best_child.info.run_id in page and 'class="completed best"' in page and "data:image/png;base64," in page
    assert f"lem study min_energy verdict: {len(study.trials)} trials" in result.stdout


def test_engine_reuse_loads_the_model_once_across_runtime_only_trials(min_energy_study: tuple[Path, subprocess.CompletedProcess]) -> None:
    sweep_dir, result = min_energy_study
    assert result.returncode == 0, result.stderr[-3000:]
    headers = [json.loads((d / "raw" / "process-0.jsonl").read_text().splitlines()[0]) for d in sorted(sweep_dir.iterdir()) if (d / "raw").is_dir()]
    assert len(headers) == 6
    assert [h["engine_reused"] for h in headers].count(False) == 1


def test_pareto_study_returns_a_front(tiny_model: Path, store: Path, tmp_path: Path) -> None:
    from lem.search.report import best_trials
    from lem.search.settings import StudySettings

    sweep_dir = tmp_path / "study"
    result = run_study_cli(study_command(sweep_dir, tiny_model, "pareto", "hydra.sweeper.n_trials=4", store=store), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir, "pareto")
    settings = StudySettings(study_name="pareto", storage="", directions=["minimize", "maximize"],
                             objectives=["energy.j_per_output_token", "throughput.output_tokens_per_s"], n_trials=4)
    front = best_trials(study, settings)
    assert front and {tuple(t.values) for t in front} == {tuple(t.values) for t in study.best_trials}
    complete = [t for t in study.trials if t.values is not None]
    for t in front:  # nothing beats a front trial on both J/token and tokens/s
        assert not any(o.values[0] < t.values[0] and o.values[1] > t.values[1] for o in complete)
    assert "Pareto front" in result.stdout
    assert all(f"#{t.number}" in result.stdout for t in front)


def test_latency_limits_mark_trials_infeasible(tiny_model: Path, store: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "study"
    # No run can have its first token within a microsecond: every trial is infeasible.
    result = run_study_cli(study_command(sweep_dir, tiny_model, "pareto", "hydra.sweeper.n_trials=2", "hydra.sweeper.max_ttft_p99_ms=0.001", store=store), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir, "pareto")
    done = [t for t in study.trials if t.values is not None]
    assert len(done) == 2
    assert all(t.user_attrs["lem.constraints"]["ttft_p99_ms"] > 0 for t in done)  # by name, for lem
    assert all(max(t.constraints.values()) > 0 for t in done)  # as Optuna (and optuna-dashboard) read them
    assert study.best_trials == []
    assert "infeasible" in result.stdout and "no trial completed within the limits" in result.stdout


def test_a_failing_trial_is_recorded_and_the_study_continues(tiny_model: Path, store: Path, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    not_a_model = tmp_path / "not-a-model"  # its config.json passes validation; loading it fails at run time
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text('{"model_type": "llama"}')
    sweep_dir = tmp_path / "study"
    cmd = study_command(sweep_dir, f"choice({tiny_model},{not_a_model})", "min_energy", "hydra.sweeper.n_trials=4",
                        "hydra.sweeper.max_failure_rate=0.5", "decoder=deterministic", "batching.batch_size=choice(1,2)", store=store)
    result = run_study_cli(cmd, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # failed jobs make the command fail, after the study
    assert "job(s) of the sweep failed" in result.stderr
    study = load(sweep_dir, "min_energy")
    measured = [t for t in study.trials if "lem.duplicate_of" not in t.user_attrs]
    failed = [t for t in measured if t.state == TrialState.FAIL]
    assert len(measured) == 4 and len(failed) == 2  # the study went on past its failures
    assert all(t.params["model.name_or_path"] == str(not_a_model) for t in failed)
    assert all((sweep_dir / str(t.number) / "error.txt").is_file() for t in failed)
    runs = {r.info.run_id: r for r in mlflow_runs(store)}
    for t in failed:
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FAILED" and run.data.tags["lem.optuna.trial_number"] == str(t.number)


def test_a_trial_refused_by_validation_is_one_failed_run(tiny_model: Path, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    store = tmp_path / "mlflow.db"
    sweep_dir = tmp_path / "study"
    cmd = study_command(sweep_dir, tiny_model, "min_energy", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=2",
                        "hydra.sweeper.max_failure_rate=0.5", "decoder=deterministic", "batching.batch_size=choice(0,2)",
                        "precision.dtype=float32", "backend.pytorch.attn_implementation=sdpa", store=store)
    result = run_study_cli(cmd, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    study = load(sweep_dir, "min_energy")
    refused = [t for t in study.trials if t.state == TrialState.FAIL and t.params.get("batching.batch_size") == 0]
    assert len(refused) == 1
    runs = mlflow_runs(store)
    tagged = [r for r in runs if r.data.tags.get("lem.optuna.trial_number") == str(refused[0].number)]
    assert len(tagged) == 1 and tagged[0].info.status == "FAILED"  # the callback's FAILED child, not a second run
    assert not any(r.info.run_name == f"trial {refused[0].number} (failed)" for r in runs)
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId")]) == 2  # two trials, two children


def test_a_trial_whose_engine_worker_dies_is_failed_and_the_study_continues(tiny_model: Path, store: Path, tmp_path: Path) -> None:
    import psutil
    from optuna.trial import TrialState

    sweep_dir = tmp_path / "study"
    # Two configurations: a short one and a long one, during which the engine worker is killed.
    cmd = study_command(sweep_dir, tiny_model, "min_energy", "hydra.sweeper.n_trials=2", "hydra.sweeper.max_failure_rate=0.5",
                        "decoder=deterministic", "batching.batch_size=1", "dataset.ignore_eos=true", "dataset.max_input_tokens=32",
                        "dataset.n_prompts=8", "dataset.max_output_tokens=choice(2,200)", store=store)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LEM_MLFLOW_PARENT_RUN_ID", None)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    try:
        deadline = time.monotonic() + 400
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            running = [
                d for d in sweep_dir.glob("[0-9]*")
                if (d / "raw").is_dir() and not (d / "summary.json").exists()
                and (d / ".hydra" / "overrides.yaml").is_file()
                and "dataset.max_output_tokens=200" in (d / ".hydra" / "overrides.yaml").read_text(errors="replace")
            ] if sweep_dir.is_dir() else []
            if not running:
                continue
            workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
            if workers:
                workers[0].kill()
                killed = int(running[0].name)
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "the long trial ended before its worker could be killed"
    assert proc.returncode == 1, stderr[-3000:]
    study = load(sweep_dir, "min_energy")
    trial = study.trials[killed]
    assert trial.state == TrialState.FAIL and "worker" in trial.user_attrs["lem.error"]
    others = [t for t in study.trials if t.number != killed and "lem.duplicate_of" not in t.user_attrs]
    assert [t.state for t in others] == [TrialState.COMPLETE]  # the study went on with a fresh worker
    run = {r.info.run_id: r for r in mlflow_runs(store)}[trial.user_attrs["mlflow_run_id"]]
    assert run.info.status == "FAILED" and run.data.tags["lem.optuna.trial_number"] == str(killed)
    assert f"trial {killed} failed" in stdout


def test_an_interrupted_study_resumes_without_repeating_trials(tiny_model: Path, store: Path, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    sweep_dir = tmp_path / "study"
    cmd = study_command(sweep_dir, tiny_model, "min_energy", "hydra.sweeper.n_trials=5", store=store)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LEM_MLFLOW_PARENT_RUN_ID", None)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill it (no clean-up possible) once two trials are finished
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                if sum(t.state == TrialState.COMPLETE for t in load(sweep_dir, "min_energy").trials) >= 2:
                    break
            except Exception:  # noqa: BLE001 - the storage is not created yet
                continue
        assert proc.poll() is None, "the study ended before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    before = {t.number: (t.params, t.values) for t in load(sweep_dir, "min_energy").trials if t.state == TrialState.COMPLETE}
    summaries_before = {n: (sweep_dir / str(n) / "summary.json").stat().st_mtime_ns for n in before}
    assert len(before) >= 2

    result = run_study_cli(cmd, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir, "min_energy")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE and "lem.duplicate_of" not in t.user_attrs]
    assert len(complete) == 5
    for n, (params, values) in before.items():  # finished trials kept, and not run again
        assert (study.trials[n].params, study.trials[n].values) == (params, values)
        assert (sweep_dir / str(n) / "summary.json").stat().st_mtime_ns == summaries_before[n]
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    # Job N is trial N: every folder with results belongs to a measured trial, or to the one the kill interrupted
    # (which may have finished its job before the process died, without telling Optuna).
    interrupted = {t.number for t in study.trials if t.user_attrs.get("lem.interrupted")}
    job_dirs = {int(d.name) for d in sweep_dir.iterdir() if (d / "summary.json").is_file()}
    assert len(interrupted) <= 1
    assert {t.number for t in complete} <= job_dirs <= {t.number for t in complete} | interrupted


def test_job_folders_of_an_unknown_study_are_never_overwritten(tmp_path: Path) -> None:
    from lem.errors import LemError
    from lem.search.hydra_sweep import _refuse_foreign_job_dirs

    (tmp_path / "0" / "raw").mkdir(parents=True)
    (tmp_path / "1").mkdir()  # a folder without results: harmless
    _refuse_foreign_job_dirs(tmp_path, n_trials_in_study=1)  # trial 0 is the study's own
    with pytest.raises(LemError, match="job folder\\(s\\) 0 hold results the study does not know"):
        _refuse_foreign_job_dirs(tmp_path, n_trials_in_study=0)
