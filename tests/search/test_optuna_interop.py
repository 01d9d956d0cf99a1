"""A lem study as other Optuna tools see it: objectives named, infeasible trials marked where
optuna-dashboard reads them (whatever the sampler), and importances from few trials flagged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

OBJECTIVES = ["energy.j_per_output_token", "throughput.output_tokens_per_s"]


def _settings(tmp_path: Path, **kw: Any) -> Any:
    from lem.search.settings import TTFT_P99_MS, StudySettings

    base: dict[str, Any] = dict(
        study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db", directions=["minimize", "maximize"],
        objectives=OBJECTIVES, n_trials=4, limits={TTFT_P99_MS: 250.0},
    )
    base.update(kw)
    return StudySettings(**base)


def _launch(batch: list[tuple[int, list[str]]]) -> list[Any]:
    """J/token 1/batch, tokens/s 10 x batch, TTFT 100 ms x batch (over the 250 ms limit from batch 4 on)."""
    from lem.search.settings import TrialOutcome

    out = []
    for _, overrides in batch:
        bs = int(next(o for o in overrides if o.startswith("batching.batch_size=")).split("=")[1])
        metrics = {"energy.j_per_output_token": 1.0 / bs, "throughput.output_tokens_per_s": 10.0 * bs,
                   "latency.ttft_ms.p99": 100.0 * bs, "latency.tpot_ms.p99": 5.0}
        outcome = TrialOutcome(metrics=metrics)
        outcome.energy_source = "estimated"  # summary.json's energy.source (an attribute an older TrialOutcome lacks)
        out.append(outcome)
    return out


def _space() -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution

    return {"batching.batch_size": CategoricalDistribution((1, 2, 4, 8))}


def _study(tmp_path: Path, sampler: str, **kw: Any) -> Any:
    from lem.search.study import run_study

    settings = _settings(tmp_path, **kw)
    result = run_study(settings, _space(), {}, _launch, sampler_cfg={"_target_": sampler, "seed": 0}, echo=lambda _: None)
    return result.study, settings


def test_objectives_are_named_and_a_named_study_reopens(tmp_path: Path) -> None:
    from lem.search.settings import metric_names
    from lem.search.storage import open_study

    assert metric_names(OBJECTIVES) == ["j_per_output_token", "output_tokens_per_s"]
    assert metric_names(["latency.ttft_ms.p99", "other.ttft_ms.p99"]) == ["latency_ttft_ms_p99", "other_ttft_ms_p99"]
    settings = _settings(tmp_path)
    study = open_study(settings, None, _space())
    assert study.metric_names == ["j_per_output_token", "output_tokens_per_s"]
    again = open_study(settings, None, _space())  # names already set: opened as it is
    assert again.metric_names == ["j_per_output_token", "output_tokens_per_s"]

    # A study created before lem named its objectives gets the names when it is resumed.
    bare = _settings(tmp_path, study_name="older")
    optuna.create_study(study_name="older", storage=bare.storage, directions=bare.directions)
    assert optuna.load_study(study_name="older", storage=bare.storage).metric_names is None
    assert open_study(bare, None, _space()).metric_names == ["j_per_output_token", "output_tokens_per_s"]


@pytest.mark.parametrize("sampler", ["optuna.samplers.RandomSampler", "optuna.samplers.TPESampler", "optuna.samplers.GridSampler"])
def test_every_measured_trial_carries_its_constraints_where_optuna_dashboard_reads_them(tmp_path: Path, sampler: str) -> None:
    from optuna.trial import TrialState

    study, _ = _study(tmp_path, sampler)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert {t.params["batching.batch_size"] for t in complete} == {1, 2, 4, 8}
    for t in complete:  # measured and repeated trials alike
        # optuna-dashboard (0.21, _serializer.serialize_frozen_trial) reads system_attrs["constraints"], a list.
        constraints = t.system_attrs.get("constraints")
        bs = t.params["batching.batch_size"]
        assert constraints == [100.0 * bs - 250.0], (t.number, t.system_attrs)
        assert (max(constraints) > 0) is (bs >= 4)
        assert all(v > 0 for v in t.constraints.values()) is (bs >= 4)  # Optuna itself agrees
    assert {t.params["batching.batch_size"] for t in study.best_trials} == {2}

    from lem.search.settings import ATTR_DUPLICATE_OF, ATTR_ENERGY_SOURCE
    from lem.search.storage import CONSTRAINTS_SYSTEM_ATTR

    assert CONSTRAINTS_SYSTEM_ATTR == "constraints"
    assert all(t.user_attrs[ATTR_ENERGY_SOURCE] == "estimated" for t in complete)  # for the plots' "estimated"
    if sampler.endswith("TPESampler"):  # TPE proposes repeats in a 4-point space: they are marked too
        assert any(ATTR_DUPLICATE_OF in t.user_attrs for t in complete)


def test_optuna_dashboard_shows_the_violating_trial_as_infeasible(tmp_path: Path) -> None:
    serializer = pytest.importorskip("optuna_dashboard._serializer")
    named = pytest.importorskip("optuna_dashboard._named_objectives")

    study, _ = _study(tmp_path, "optuna.samplers.RandomSampler")
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    assert named.get_objective_names(system_attrs) == ["j_per_output_token", "output_tokens_per_s"]
    for t in study.get_trials():
        if t.values is None:
            continue
        shown = serializer.serialize_frozen_trial(study._study_id, t, system_attrs)
        # The dashboard greys a trial out when any of these is > 0 (feasible iff all <= 0).
        infeasible = any(c > 0 for c in shown["constraints"])
        assert shown["constraints"] and infeasible is (t.params["batching.batch_size"] >= 4)


def test_importances_from_few_trials_come_with_a_warning(tmp_path: Path) -> None:
    from optuna.distributions import IntDistribution

    from lem.search.report import importances
    from lem.search.settings import MIN_TRIALS_FOR_IMPORTANCES, StudySettings

    settings = StudySettings(study_name="imp", storage="unused", directions=["minimize"], objectives=["energy.j_per_output_token"], n_trials=20)

    def study_of(n: int) -> Any:
        study = optuna.create_study(direction="minimize")
        for i in range(n):
            params = {"a": i % 5, "b": (i * 3) % 7}
            dists = {"a": IntDistribution(0, 4), "b": IntDistribution(0, 6)}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=[1.0 + params["a"] + 0.1 * params["b"]]))
        return study

    printed: list[str] = []
    few = importances(study_of(6), settings, echo=printed.append)
    assert few and few.n_trials == 6
    assert few.warning == "parameter importances from 6 trials are unreliable (fewer than 10)"
    assert printed == [f"lem: warning: {few.warning}"]

    printed.clear()
    enough = importances(study_of(MIN_TRIALS_FOR_IMPORTANCES + 2), settings, echo=printed.append)
    assert enough and enough.warning is None and printed == []
    assert max(enough["energy.j_per_output_token"], key=enough["energy.j_per_output_token"].get) == "a"


def test_importances_leave_out_repeats_and_count_measured_trials(tmp_path: Path) -> None:
    from lem.search.report import importances

    study, settings = _study(tmp_path, "optuna.samplers.TPESampler", n_trials=4, limits={})
    printed: list[str] = []
    result = importances(study, settings, echo=printed.append)
    assert len(study.trials) > 4  # TPE asked for repeats of the 4 configurations
    assert result.n_trials == 4 and printed == ["lem: warning: parameter importances from 4 trials are unreliable (fewer than 10)"]


def test_a_trial_with_no_good_token_is_pruned_not_failed_and_the_best_is_among_the_rest(tmp_path: Path) -> None:
    """min J per good token: batch 8 meets no latency objective (J per good token null) and must
    neither count as a failure towards max_failure_rate nor win."""
    from optuna.trial import TrialState

    from lem.search.settings import ATTR_ERROR, J_PER_GOOD_TOKEN, TrialOutcome
    from lem.search.study import run_study

    def launch(batch: list[tuple[int, list[str]]]) -> list[Any]:
        out = []
        for _, overrides in batch:
            bs = int(next(o for o in overrides if o.startswith("batching.batch_size=")).split("=")[1])
            out.append(TrialOutcome(metrics={J_PER_GOOD_TOKEN: None if bs == 8 else 1.0 / bs}))
        return out

    settings = _settings(tmp_path, directions=["minimize"], objectives=[J_PER_GOOD_TOKEN], limits={}, max_failure_rate=0.0)
    sampler = {"_target_": "optuna.samplers.GridSampler", "seed": 0}
    result = run_study(settings, _space(), {}, launch, sampler_cfg=sampler, echo=lambda _: None)
    trials = {t.params["batching.batch_size"]: t for t in result.study.get_trials()}
    assert result.stopped is None or "failed" not in result.stopped
    assert trials[8].state == TrialState.PRUNED and "no request met the latency objectives" in trials[8].user_attrs[ATTR_ERROR]
    assert result.study.best_trial.params["batching.batch_size"] == 4
