"""``study.json``: a study's plan and what became of each of its runs, kept in the sweep folder.

Written before the first job and after every job (atomically), so an interrupted or killed study
can be continued (``lem.study.resume``): each visit is ``pending``, ``running``, ``completed``,
``failed``, ``interrupted`` or ``skipped`` (its configuration was refused or the circuit
breaker stopped the study before it), with its job folder, its attempts and the pause before it.
Each job folder also gets ``study_visit.json`` before it starts: where the run stands in the
study, read into its summary (``summary.study``) and its MLflow tags.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lem.files import write_json_atomic
from lem.study.order import Visit
from lem.study.plan import Plan, Point
from lem.study.visit import VISIT_FILE

STUDY_FILE = "study.json"
ATTEMPTS_DIR = ".attempts"  # earlier attempts of a rerun job, moved out of its number's folder
SCHEMA = 1
PENDING, RUNNING, COMPLETED, FAILED, INTERRUPTED = "pending", "running", "completed", "failed", "interrupted"


def read_study(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((sweep_dir / STUDY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


class StudyState:
    """The study file of one sweep folder, in memory; :meth:`save` writes it."""

    def __init__(self, sweep_dir: Path, data: dict[str, Any]) -> None:
        self.sweep_dir = sweep_dir
        self.data = data

    @classmethod
    def new(cls, sweep_dir: Path, plan: Plan, study: dict[str, Any]) -> StudyState:
        now = time.time()
        data = {
            "schema": SCHEMA, "created_unix_s": now, "updated_unix_s": now, "status": PENDING, "stopped": None,
            "command": plan.command, "order": plan.order.value, "seed": plan.seed, "settings": study,
            "points": [asdict(p) for p in plan.points],
            "visits": [{**asdict(v), "status": PENDING, "attempts": 0, "started_unix_s": None, "ended_unix_s": None, "pause": None}
                       for v in plan.visits],
            "idle_baseline": None, "sessions": [], "configs": None,
        }
        return cls(sweep_dir, data)

    @classmethod
    def load(cls, sweep_dir: Path) -> StudyState | None:
        data = read_study(sweep_dir)
        return cls(sweep_dir, data) if data is not None else None

    def save(self) -> None:
        self.data["updated_unix_s"] = time.time()
        write_json_atomic(self.sweep_dir / STUDY_FILE, self.data, indent=1)

    def visit(self, position: int) -> dict[str, Any]:
        return self.data["visits"][position]

    def job_dir(self, visit: Visit) -> Path:
        return self.sweep_dir / str(visit.job)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.data["visits"]:
            out[v["status"]] = out.get(v["status"], 0) + 1
        return out

    def refresh(self) -> None:
        """Each visit's status from its job folder (a killed study left some ``running``)."""
        for v in self.data["visits"]:
            if v["status"] in (RUNNING, FAILED, INTERRUPTED, COMPLETED):
                v["status"] = job_outcome(self.sweep_dir / str(v["job"]))


def job_outcome(run_dir: Path) -> str:
    """completed (a completed summary), interrupted, failed (an error, or a folder a killed job left), or pending (no folder)."""
    from lem.launch.faults import INTERRUPT_FILE

    if not run_dir.is_dir():
        return PENDING
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = None
    if (run_dir / "error.txt").is_file():
        return FAILED
    if (run_dir / INTERRUPT_FILE).is_file():
        return INTERRUPTED
    if isinstance(summary, dict) and summary.get("status") == "completed":
        return COMPLETED
    return FAILED if (run_dir / "raw").is_dir() or (run_dir / ".hydra").is_dir() else PENDING


def set_aside(run_dir: Path) -> Path | None:
    """Move an earlier attempt's folder to ``<sweep>/.attempts/<job>-<n>`` so the rerun gets a clean folder."""
    if not run_dir.exists():
        return None
    attempts = run_dir.parent / ATTEMPTS_DIR
    attempts.mkdir(exist_ok=True)
    n = 1
    while (attempts / f"{run_dir.name}-{n}").exists():
        n += 1
    target = attempts / f"{run_dir.name}-{n}"
    shutil.move(str(run_dir), str(target))
    return target


def write_visit_file(run_dir: Path, visit: Visit, point: Point, plan: Plan, pause: dict[str, Any] | None, n_visits: int) -> None:
    """Where the job stands in the study, before it starts (its summary and MLflow run read it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / VISIT_FILE, {
        "study_dir": str(run_dir.parent), "position": visit.position, "n_positions": n_visits, "point": point.index,
        "cycle": visit.cycle, "round": visit.round, "order": plan.order.value, "seed": plan.seed,
        "cycles_of_point": point.cycles, "point_overrides": point.overrides, "pause": pause, "started_unix_s": time.time(),
    }, indent=1)
