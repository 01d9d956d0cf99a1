"""The study sweeper's body: take the study the ``lem_study`` callback prepared (or prepare it), run it, report it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def sweep(config: Any, config_loader: Any, launcher: Any) -> list[Any]:
    from omegaconf import OmegaConf

    from lem.errors import LemError
    from lem.session import current
    from lem.study.execute import run_study
    from lem.study.prepare import prepare

    session = current()
    study = getattr(session, "study", None)
    if study is None:  # hydra.callbacks without lem_study: plan here (refusals then end the command)
        try:
            study = prepare(config, config_loader)
        except LemError as exc:
            print(f"lem: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if not study.plan.runnable:
            print("lem: error: the sweep has no configuration to run", file=sys.stderr, flush=True)
            raise SystemExit(2)
    sweep_dir = study.state.sweep_dir
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    try:
        returns = run_study(study, launcher, on_set_aside=lambda old, new: _mark_superseded(config, old, new))
    finally:
        configs = study.state.data.get("configs")
        if configs:
            from lem.study.report import pooled_table

            print(pooled_table(configs), file=sys.stderr, flush=True)
    return returns


def _mark_superseded(config: Any, old: Path, new: Path) -> None:
    """The earlier attempt's MLflow child is marked superseded (not a job of the study's table) and points at its new folder."""
    from lem.tracking.store import ENV_PARENT_RUN_ID, target_from_config

    parent = os.environ.get(ENV_PARENT_RUN_ID)
    if not parent:
        return
    try:
        from lem.tracking.sweep import mark_superseded

        target = target_from_config(config)
        if target is not None:
            mark_superseded(target, parent, old, new)
    except Exception as exc:  # noqa: BLE001 - tracking never stops a study
        print(f"lem: warning: could not mark the earlier attempt of {old} in MLflow ({exc})", file=sys.stderr)
