"""The Hydra callback that plans a ``-m`` sweep before anything starts (``hydra.callbacks.lem_study``, listed first).

For lem's study sweeper only (``hydra/sweeper=lem_study``, the default; an Optuna search plans its
own trials): composes and validates every point, finds duplicates, decides whether an unfinished
study continues (``lem.study.prepare``), prints the plan in one line, and refuses — exit 2, no
folder, no MLflow run — a sweep with nothing to run, a changed study, or a thermal gate this
machine cannot read. Points refused by validation are named when the sweep ends, as before.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback

SWEEPER_TARGET = "hydra_plugins.lem_study_sweeper.sweeper.LemStudySweeper"


def is_study_sweep(config: Any) -> bool:
    try:
        return str(config.hydra.sweeper.get("_target_", "")) == SWEEPER_TARGET
    except Exception:  # noqa: BLE001
        return False


class StudyCallback(Callback):
    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if not is_study_sweep(config):
            return
        from hydra.core.global_hydra import GlobalHydra

        from lem.errors import LemError
        from lem.session import current
        from lem.study.plan import REFUSED
        from lem.study.prepare import prepare
        from lem.study.report import start_line

        session = current()
        try:
            study = prepare(config, GlobalHydra.instance().config_loader())
        except LemError as exc:
            _refuse(config, str(exc))
        plan = study.plan
        session.study_points = len(plan.points)
        session.refused_jobs += [(str(p.index), str(p.reason)) for p in plan.points if p.status == REFUSED]
        if not plan.runnable:
            _refuse(config, session.refusals_line() or "the sweep has no configuration to run")
        print(start_line(plan), file=sys.stderr, flush=True)
        if study.resumed:
            counts = study.state.counts()
            kept = counts.get("completed", 0)
            print(f"lem: study: {kept} of {len(plan.visits)} jobs completed earlier are kept; {len(plan.visits) - kept} to run "
                  f"(in {study.state.sweep_dir})", file=sys.stderr, flush=True)
        session.study = study


def _refuse(config: Any, message: str) -> None:
    from lem.launch.run_dir import discard_if_empty

    try:
        discard_if_empty(str(config.hydra.sweep.dir))
    except Exception:  # noqa: BLE001 - no folder to tidy
        pass
    print(f"lem: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)
