"""When a study resumes: its interrupted trials logged to MLflow under the parent run that ran them.

A study whose process was killed (SIGKILL, SIGTERM, a node lost) leaves trials RUNNING, which
``lem.search.storage`` fails as interrupted when the study is opened again, and a sweep parent
run RUNNING in MLflow. Each trial recorded, when it was asked, the parent run of its session
(``ATTR_PARENT``); here each interrupted trial is logged under that parent — its job folder
as a KILLED child when the job had started, else a FAILED "trial N (interrupted)" run — and a
parent whose process is gone is closed (KILLED). Never twice: a trial already in MLflow is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lem.search.settings import ATTR_INTERRUPTED, ATTR_OVERRIDES, ATTR_PARENT

INTERRUPTED_ERROR = "interrupted: the process running the study was killed"


def log_interrupted_trials(study: Any, target: Any, sweep_dir: Path, study_name: str) -> list[int]:
    """Log each interrupted trial not yet in MLflow under its own parent; close stale parents. The trial numbers logged."""
    from lem.search.report import STUDY_NAME_TAG, TRIAL_NUMBER_TAG
    from lem.tracking.mlflow_sink import PARENT_TAG, log_run_dir
    from lem.tracking.run_folder import is_run_dir
    from lem.tracking.store import connect
    from lem.tracking.sweep import close_if_stale

    if target is None:
        return []
    logged: list[int] = []
    parents: set[str] = set()
    for t in study.get_trials(deepcopy=False):
        parent = t.user_attrs.get(ATTR_PARENT) or {}
        if not parent.get("run_id"):
            continue
        parent_id, sweep_id = str(parent["run_id"]), parent.get("sweep_id")
        parents.add(parent_id)  # every earlier session's parent: closed below if its process is gone
        if not t.user_attrs.get(ATTR_INTERRUPTED):
            continue
        client, experiment_id = connect(target)
        query = f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_NUMBER_TAG}` = '{t.number}'"
        if client.search_runs([experiment_id], filter_string=query, max_results=1):
            continue  # logged by an earlier resume
        tags = {TRIAL_NUMBER_TAG: str(t.number), STUDY_NAME_TAG: study_name}
        job_dir = sweep_dir / str(t.number)
        if job_dir.is_dir() and is_run_dir(job_dir):
            run_id, _ = log_run_dir(job_dir, target, parent_run_id=parent_id, sweep_id=sweep_id, job_num=t.number,
                                    live=False, skip_if_logged=True)
            client.log_batch(run_id, tags=_run_tags(tags))
        else:
            overrides = t.user_attrs.get(ATTR_OVERRIDES) or []
            tags.update({PARENT_TAG: parent_id, "lem.job_num": str(t.number), "lem.overrides": " ".join(map(str, overrides)),
                         "mlflow.note.content": f"Interrupted: {INTERRUPTED_ERROR}"})
            if sweep_id:
                tags["lem.sweep_id"] = str(sweep_id)
            start_ms = int(t.datetime_start.timestamp() * 1000) if t.datetime_start else None
            created = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=f"trial {t.number} (interrupted)")
            client.set_terminated(created.info.run_id, status="KILLED")
        logged.append(t.number)
    for parent_id in parents:
        close_if_stale(target, parent_id)
    return logged


def _run_tags(tags: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]
