"""A study's verdict: its trials as verdict rows (:mod:`lem.report.verdict`), its search space as
the parent run's params, and its best trial's headline metrics for the parent run.

Works on :func:`lem.search.report.study_rows` output, so it needs no study and imports no Optuna
at module level.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.search.settings import SHORT_NAMES, StudySettings


def verdict_rows(trial_rows: Sequence[Mapping[str, Any]], settings: StudySettings) -> list[dict[str, Any]]:
    """One verdict row per measured or duplicate trial that has ended: completed, failed, infeasible
    (over a latency limit) or duplicate, with its figures from its summary.json (else the recorded ones).

    ``trial_rows``: ``study_rows(study, settings, measured_only=False)``.
    """
    from lem.report.verdict import row_from_summary
    from lem.search.space import format_value

    out = []
    for r in trial_rows:
        if r["kind"] not in ("measured", "duplicate") or r["state"] not in ("COMPLETE", "FAIL", "PRUNED"):
            continue
        if r["kind"] == "duplicate":
            status = "duplicate"
        elif r["state"] == "PRUNED":
            status = "no good tokens"  # ran, but no request met slo.*: J per good token has no value
        elif r["state"] != "COMPLETE":
            status = "failed"
        else:
            status = "completed" if r["feasible"] else "infeasible"
        summary = summary_of(r["run_dir"]) or _nested(r, settings.recorded)
        out.append(row_from_summary(summary, num=r["number"], swept={k: format_value(v) for k, v in r["params"].items()},
                                    status=status, run_id=r["mlflow_run_id"], run_dir=r["run_dir"], duplicate_of=r["duplicate_of"]))
    return out


def summary_of(run_dir: str | None) -> dict[str, Any] | None:
    """A job folder's summary.json, None when it has none."""
    if not run_dir:
        return None
    try:
        data = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _nested(row: Mapping[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """Recorded figures at dotted paths as a nested summary, for a trial whose folder is gone."""
    out: dict[str, Any] = {}
    for path in paths:
        if row.get(path) is None:
            continue
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = row[path]
    return out


def best_row(rows: Sequence[dict[str, Any]], best_numbers: Sequence[int]) -> dict[str, Any] | None:
    """The verdict row of the study's best trial (the first of a Pareto front); None when there is none."""
    return next((r for r in rows if best_numbers and r["num"] == best_numbers[0]), None)


def best_reason(settings: StudySettings) -> str:
    """Why the best trial is best: ``minimize J/token``, or its place on a Pareto front."""
    goal = f"{settings.directions[0]} {SHORT_NAMES.get(settings.objectives[0], settings.objectives[0])}"
    return goal if len(settings.directions) == 1 else f"on the Pareto front, first by {goal}"


def describe_distribution(distribution: Any) -> str:
    """``choice(1, 2, 4)``, ``int 1..64 step 1``, ``float 0.5..8.0 log``: a searched key's values as a param."""
    from lem.search.space import format_value

    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return "choice(" + ", ".join(format_value(c) for c in choices) + ")"
    kind = "int" if type(distribution).__name__.startswith("Int") else "float"
    text = f"{kind} {distribution.low}..{distribution.high}"
    if getattr(distribution, "log", False):
        return text + " log"
    step = getattr(distribution, "step", None)
    return text + (f" step {step}" if step is not None else "")


def study_params(settings: StudySettings, distributions: Mapping[str, Any] | None, sampler: str) -> dict[str, str]:
    """The parent run's params: each searched key with its values, the objective(s) and directions,
    the limits, n_trials and the sampler; never the base config's defaults."""
    from lem.redact import redact

    params = {key: describe_distribution(d)[:6000] for key, d in (distributions or {}).items()}
    params.update({
        "optuna.study_name": settings.study_name,
        "optuna.storage": redact(settings.storage)[:6000],
        "optuna.sampler": sampler,
        "optuna.directions": ",".join(settings.directions),
        "optuna.objectives": ",".join(settings.objectives),
        "optuna.n_trials": str(settings.n_trials),
    })
    params.update({f"optuna.limit.{p}": str(v) for p, v in settings.limits.items()})
    return params


def headline_metrics(child_metrics: Mapping[str, float] | None, summary: Mapping[str, Any] | None) -> dict[str, float]:
    """The best trial's headline metrics under their MLflow names: its child run's values (an older
    child's names too), else read from its summary.json."""
    from lem.tracking.metrics import HEADLINE_METRICS, finite_number, value_at
    from lem.tracking.parent_verdict import OLD_NAMES

    out: dict[str, float] = {}
    for name, path in HEADLINE_METRICS.items():
        value = None
        if child_metrics:
            value = child_metrics.get(name, child_metrics.get(OLD_NAMES.get(name, "")))
        if value is None and summary:
            value = finite_number(value_at(summary, path))
        if value is not None and math.isfinite(value):
            out[name] = float(value)
    return out
