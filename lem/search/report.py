"""A study's result: the best trial(s), a printed table, and its record in the sweep's MLflow parent run.

The parent run (created by lem's Hydra callback) receives ``optuna/study.json`` (settings,
best trial(s) with their params, values and MLflow runs), ``study/trials.csv``, the plots
``optuna/pareto_front.png``, ``optuna/optimization_history.png`` and
``optuna/param_importances.png``, and ``optuna/...`` metrics. Each trial's child run is
tagged ``lem.optuna.trial_number``; each trial stores its child's id as ``mlflow_run_id``.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.redact import redact
from lem.search.settings import (
    ATTR_DUPLICATE_OF,
    ATTR_ERROR,
    ATTR_INTERRUPTED,
    ATTR_METRICS,
    ATTR_MLFLOW_RUN_ID,
    ATTR_RUN_DIR,
    ATTR_SKIPPED,
    SHORT_NAMES,
    Importances,
    StudySettings,
)
from lem.search.study import format_metric, is_feasible

TRIAL_NUMBER_TAG = "lem.optuna.trial_number"
STUDY_NAME_TAG = "lem.optuna.study_name"


# --- the study as rows ------------------------------------------------------------------------


def trial_kind(t: Any) -> str:
    if ATTR_DUPLICATE_OF in t.user_attrs:
        return "duplicate"
    if ATTR_SKIPPED in t.user_attrs:
        return "skipped"
    if t.user_attrs.get(ATTR_INTERRUPTED):
        return "interrupted"
    return "measured"


def study_rows(study: Any, settings: StudySettings, *, measured_only: bool = True) -> list[dict[str, Any]]:
    """One dict per trial: number, state, kind, feasible, params, the recorded metrics, run dir, MLflow run, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        kind = trial_kind(t)
        if measured_only and kind != "measured":
            continue
        metrics = t.user_attrs.get(ATTR_METRICS, {})
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "kind": kind,
            "feasible": is_feasible(t),
            "duplicate_of": t.user_attrs.get(ATTR_DUPLICATE_OF),
            "params": dict(t.params),
            "run_dir": t.user_attrs.get(ATTR_RUN_DIR),
            "mlflow_run_id": t.user_attrs.get(ATTR_MLFLOW_RUN_ID),
            "error": t.user_attrs.get(ATTR_ERROR),
            "values": list(t.values) if t.values is not None else None,
        }
        for path in settings.recorded:
            row[path] = metrics.get(path)
        rows.append(row)
    return rows


def best_trials(study: Any, settings: StudySettings) -> list[Any]:
    """The best feasible measured trial (one objective) or the feasible Pareto front (several), as FrozenTrials."""
    from optuna.trial import TrialState

    done = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if trial_kind(t) == "measured" and is_feasible(t) and t.values is not None
    ]
    if not done:
        return []
    signs = [1.0 if d == "minimize" else -1.0 for d in settings.directions]
    costs = {t.number: [s * v for s, v in zip(signs, t.values)] for t in done}
    if len(signs) == 1:
        return [min(done, key=lambda t: (costs[t.number][0], t.number))]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    front = [t for t in done if not any(dominates(costs[o.number], costs[t.number]) for o in done if o is not t)]
    unique: dict[tuple[float, ...], Any] = {}
    for t in sorted(front, key=lambda t: (costs[t.number], t.number)):
        unique.setdefault(tuple(costs[t.number]), t)  # equal values twice: keep the first trial
    return list(unique.values())


# --- the printed summary --------------------------------------------------------------------


def format_summary(study: Any, settings: StudySettings, stopped: str | None = None) -> str:
    """The study's verdict for the terminal: its settings, then every trial (:func:`lem.report.verdict.render_verdict`)."""
    from lem.report.verdict import render_verdict
    from lem.search.verdict import best_reason, best_row, verdict_rows

    rows = study_rows(study, settings)
    n_failed = sum(r["state"] == "FAIL" for r in rows)
    n_infeasible = sum(r["state"] == "COMPLETE" and not r["feasible"] for r in rows)
    best = best_trials(study, settings)
    goal = ", ".join(f"{d} {SHORT_NAMES.get(o, o)}" for d, o in zip(settings.directions, settings.objectives))
    limits = ", ".join(f"{SHORT_NAMES.get(p, p)} <= {format_metric(v)}" for p, v in settings.limits.items())
    lines = [
        "",
        f"Optuna study {settings.study_name!r} ({goal}{'; ' + limits if limits else ''})",
        f"  storage   {redact(settings.storage)}",
        f"  trials    {len(rows)} measured of n_trials={settings.n_trials}: {len(rows) - n_failed - n_infeasible} feasible, "
        f"{n_infeasible} infeasible, {n_failed} failed",
    ]
    if stopped:
        lines.append(f"  stopped   {stopped}")
    if not best:
        lines.append("  best      none: no trial completed within the limits")
    elif len(settings.directions) > 1:
        lines.append(f"  Pareto front ({len(best)} trial{'s' if len(best) != 1 else ''} on the study's objectives): "
                     + ", ".join(f"#{t.number}" for t in best))
    verdict = verdict_rows(study_rows(study, settings, measured_only=False), settings)
    if verdict:
        lines += ["", render_verdict(verdict, title=f"lem study {settings.study_name} verdict", best=best_row(verdict, [t.number for t in best]),
                                     what="trial", why=best_reason(settings))]
    return "\n".join(lines)


# --- files --------------------------------------------------------------------------------------


def write_trials_csv(study: Any, settings: StudySettings, path: Path) -> Path:
    rows = study_rows(study, settings, measured_only=False)
    params = list(dict.fromkeys(k for r in rows for k in r["params"]))
    front = {t.number for t in best_trials(study, settings)}
    columns = ["number", "state", "kind", "feasible", "best", *settings.recorded, *params, "duplicate_of", "run_dir", "mlflow_run_id", "error"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in rows:
            values = [r["number"], r["state"], r["kind"], r["feasible"], r["number"] in front, *[r.get(m) for m in settings.recorded]]
            values += [r["params"].get(p) for p in params]
            values += [r["duplicate_of"], r["run_dir"], r["mlflow_run_id"], r["error"]]
            writer.writerow(["" if v is None else v for v in values])
    return path


def study_summary(study: Any, settings: StudySettings, stopped: str | None = None) -> dict[str, Any]:
    rows = study_rows(study, settings)
    best = best_trials(study, settings)
    return {
        "study_name": settings.study_name,
        "storage": redact(settings.storage),
        "sampler": type(study.sampler).__name__,
        "directions": settings.directions,
        "objectives": settings.objectives,
        "limits": settings.limits,
        "n_trials": settings.n_trials,
        "n_measured": len(rows),
        "n_complete": sum(r["state"] == "COMPLETE" for r in rows),
        "n_failed": sum(r["state"] == "FAIL" for r in rows),
        "n_infeasible": sum(r["state"] == "COMPLETE" and not r["feasible"] for r in rows),
        "stopped": stopped,
        "workload_overrides": settings.identity,
        "best_trials": [
            {
                "number": t.number,
                "values": list(t.values),
                "params": dict(t.params),
                "metrics": t.user_attrs.get(ATTR_METRICS, {}),
                "run_dir": t.user_attrs.get(ATTR_RUN_DIR),
                "mlflow_run_id": t.user_attrs.get(ATTR_MLFLOW_RUN_ID),
            }
            for t in best
        ],
    }


def importances(study: Any, settings: StudySettings, *, echo: Callable[[str], None] | None = None) -> Importances:
    """Each objective's parameter importances (fANOVA, else PED-ANOVA) over the measured completed trials
    (repeats of a configuration left out); empty when too few. From fewer than
    ``MIN_TRIALS_FOR_IMPORTANCES`` trials the result's ``warning`` says they are unreliable, and
    ``echo`` (default: stderr) prints it."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    measured = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if trial_kind(t) == "measured"]
    varying = [k for k in {k for t in measured for k in t.params} if len({repr(t.params.get(k)) for t in measured}) > 1]
    out: dict[str, dict[str, float]] = {}
    if len(measured) < 3 or not varying:
        return Importances(out)
    only_measured = optuna.create_study(directions=study.directions)  # in memory: the evaluators read a whole study
    only_measured.add_trials(measured)
    evaluators = [optuna.importance.FanovaImportanceEvaluator(seed=0)]
    if hasattr(optuna.importance, "PedAnovaImportanceEvaluator"):
        evaluators.append(optuna.importance.PedAnovaImportanceEvaluator())
    for i, objective in enumerate(settings.objectives):
        for evaluator in evaluators:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    values = optuna.importance.get_param_importances(
                        only_measured, evaluator=evaluator, params=sorted(varying), target=lambda t, i=i: t.values[i]
                    )
                out[objective] = {k: float(v) for k, v in values.items()}
                break
            except Exception:  # noqa: BLE001 - too few distinct trials, or the evaluator's package is missing
                continue
    result = Importances(out, n_trials=len(measured))
    if result.warning:
        (echo or (lambda line: print(line, file=sys.stderr, flush=True)))(f"lem: warning: {result.warning}")
    return result


# --- MLflow --------------------------------------------------------------------------------------


class MlflowLink:
    """Connects each trial to its MLflow child run, and the study to the sweep's parent run.

    Tracking never stops a study: the first failure prints one warning and disables the link.
    """

    def __init__(self, target: Any, parent_run_id: str | None, study_name: str) -> None:
        self.target = target
        self.parent_run_id = parent_run_id
        self.study_name = study_name
        self.enabled = target is not None

    def _client(self) -> tuple[Any, str]:
        from lem.tracking.store import connect

        return connect(self.target)

    def _warn(self, what: str, exc: BaseException) -> None:
        from lem.tracking.store import TrackingUnavailable, error_line, warn_unavailable

        self.enabled = False
        if isinstance(exc, TrackingUnavailable):  # one line for the whole process, naming how to sync later
            warn_unavailable(self.target, str(exc), None)
            return
        print(f"lem: warning: could not {what} in MLflow ({redact(error_line(exc))}); the study goes on", file=sys.stderr, flush=True)

    def link_trial(self, number: int, outcome: Any, overrides: Sequence[str], job_dir: Path | None = None) -> None:
        """Find the trial's child run by its run folder and tag it; a trial refused before it ran gets a FAILED run.

        ``job_dir`` is where the job's folder is or was: a job refused by validation has its (empty)
        folder removed, but lem's callback has already logged it as a FAILED child under that path.
        """
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        from lem.tracking.mlflow_sink import PARENT_TAG

        try:
            client, experiment_id = self._client()
            run = None
            where = outcome.run_dir if outcome.run_dir is not None else job_dir
            if where is not None:
                path = str(Path(where).resolve()).replace("\\", "\\\\").replace("'", "\\'")
                found = client.search_runs([experiment_id], filter_string=f"tags.`lem.run_dir` = '{path}'", max_results=5)
                run = max(found, key=lambda r: r.info.start_time or 0) if found else None
            tags = [RunTag(TRIAL_NUMBER_TAG, str(number)), RunTag(STUDY_NAME_TAG, self.study_name)]
            if run is not None:
                client.log_batch(run.info.run_id, tags=tags)
                outcome.mlflow_run_id = run.info.run_id
            elif outcome.error is not None:
                run_tags = {t.key: t.value for t in tags}
                run_tags.update({"lem.overrides": " ".join(overrides), "lem.job_num": str(number), "mlflow.note.content": f"Refused: {outcome.error}"})
                if self.parent_run_id:
                    run_tags[PARENT_TAG] = self.parent_run_id
                if outcome.run_dir is not None:
                    run_tags["lem.run_dir"] = str(outcome.run_dir)
                created = client.create_run(experiment_id, tags=run_tags, run_name=f"trial {number} (failed)")
                client.set_terminated(created.info.run_id, status="FAILED")
                outcome.mlflow_run_id = created.info.run_id
        except Exception as exc:  # noqa: BLE001
            self._warn(f"link trial {number} to its run", exc)

    def log_study(self, study: Any, settings: StudySettings, stopped: str | None, distributions: Mapping[str, Any] | None = None) -> None:
        """Write the study's verdict, summary, table and plots into the sweep's parent run.

        ``distributions``: the search space, logged as the parent's params.
        """
        if not self.enabled or not self.parent_run_id:
            return
        try:
            self._log_study(study, settings, stopped, distributions)
        except Exception as exc:  # noqa: BLE001
            self._warn("log the study summary", exc)

    def _log_study(self, study: Any, settings: StudySettings, stopped: str | None, distributions: Mapping[str, Any] | None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        from lem.search import plots
        from lem.search.space import format_value
        from lem.search.verdict import (
            best_reason,
            best_row,
            headline_metrics,
            study_params,
            summary_of,
            verdict_rows,
        )
        from lem.tracking.parent_verdict import log_sweep_verdict

        client, _ = self._client()
        run_id = self.parent_run_id
        summary = study_summary(study, settings, stopped)
        best = summary["best_trials"]
        now = int(time.time() * 1000)
        metrics = [Metric(f"optuna/{k}", float(summary[k]), now, 0) for k in ("n_measured", "n_complete", "n_failed", "n_infeasible")]
        metrics.append(Metric("optuna/n_best", float(len(best)), now, 0))
        if len(settings.directions) == 1 and best:  # the best trial's objective, whatever it is (the headline metrics follow)
            metrics.append(Metric(f"optuna/best/{settings.objectives[0].replace('.', '/')}", float(best[0]["values"][0]), now, 0))
        existing = client.get_run(run_id).data.params
        params = [Param(k, v) for k, v in study_params(settings, distributions, summary["sampler"]).items() if k not in existing]
        tags = [RunTag(STUDY_NAME_TAG, settings.study_name), RunTag("lem.kind", "sweep"), RunTag("lem.optuna.n_best", str(len(best)))]
        if best:
            tags.append(RunTag("lem.optuna.best_trials", ",".join(str(b["number"]) for b in best)))
            tags.append(RunTag("lem.best_trial_number", str(best[0]["number"])))
            if len(best) == 1:
                tags += [RunTag(f"lem.optuna.best.{k}", format_value(v)) for k, v in best[0]["params"].items()]
        if stopped:
            tags.append(RunTag("lem.optuna.stopped", stopped[:5000]))
        client.log_batch(run_id, metrics=metrics)
        for i in range(0, max(len(params), 1), 100):  # params are write-once; a rerun may log into a used run
            client.log_batch(run_id, params=params[i : i + 100], tags=tags if i == 0 else [])

        rows = study_rows(study, settings)
        verdict = verdict_rows(study_rows(study, settings, measured_only=False), settings)
        top = best_row(verdict, [b["number"] for b in best])
        child = client.get_run(top["run_id"]).data.metrics if top is not None and top.get("run_id") else None
        headline = headline_metrics(child, summary_of(top["run_dir"]) if top is not None else None)
        with tempfile.TemporaryDirectory(prefix="lem-study-") as tmp:
            staged = Path(tmp)
            (staged / "optuna").mkdir()
            (staged / "study").mkdir()
            (staged / "optuna" / "study.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
            write_trials_csv(study, settings, staged / "study" / "trials.csv")
            front = [b["number"] for b in best]
            pareto = plots.plot_pareto_front(rows, front, staged / "optuna" / "pareto_front.png", title=f"study {settings.study_name}: J/token against throughput")
            plots.optimization_history(rows, settings.objectives, settings.directions, staged / "optuna" / "optimization_history.png")
            plots.param_importances(importances(study, settings), staged / "optuna" / "param_importances.png")
            heatmap = _heatmap(verdict, staged / "heatmap.png")
            client.log_artifacts(run_id, str(staged / "optuna"), "optuna")
            client.log_artifacts(run_id, str(staged / "study"), "study")
            limits = ", ".join(f"{SHORT_NAMES.get(p, p)} <= {format_metric(v)}" for p, v in settings.limits.items())
            log_sweep_verdict(
                client, run_id, verdict, best=top, headline=headline, title=f"lem study {settings.study_name}", what="trial",
                why=best_reason(settings), command=f"Optuna study `{settings.study_name}`: {summary['n_measured']} trials measured"
                f" of n_trials={settings.n_trials}, sampler {summary['sampler']}" + (f"; stopped: {stopped}" if stopped else ""),
                notes=[f"infeasible: over a limit ({limits})"] if limits else [],
                pareto_png=_read(pareto), heatmap_png=_read(heatmap),
            )


def _read(path: Any) -> bytes | None:
    try:
        return Path(path).read_bytes() if path else None
    except OSError:
        return None


def _heatmap(verdict: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """J/token over the two searched keys (exactly two), the completed trials only."""
    from lem.tracking import plots

    keys = list(dict.fromkeys(k for r in verdict for k in r["swept"]))
    cells = [{"swept": r["swept"], "status": "FINISHED", "headline/j_per_output_token": r["j_per_token"],
              "headline/output_tokens_per_s": r["tokens_per_s"]} for r in verdict if r["status"] == "completed"]
    return plots.sweep_heatmap(cells, keys[0], keys[1], path) if len(keys) == 2 and cells else None


def fail_parent(target: Any, parent_run_id: str | None, reason: str) -> None:
    """End the sweep's parent run FAILED when the study is refused before its first trial."""
    if target is None or not parent_run_id:
        return
    try:
        from mlflow.entities import RunTag

        from lem.tracking.store import connect

        client, _ = connect(target)
        client.log_batch(parent_run_id, tags=[RunTag("lem.optuna.refused", reason[:5000])])
        client.set_terminated(parent_run_id, status="FAILED")
    except Exception:  # noqa: BLE001 - the refusal itself is what the user must see
        pass
