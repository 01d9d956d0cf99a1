"""``lem plan <overrides> [-m]`` and ``lem resume [SWEEP_DIR]``: a study's plan before it runs, and continuing one.

``lem plan`` composes the sweep exactly as ``python -m lem -m <overrides>`` would, and prints every
job: run, refused (and why) or a duplicate (and of which job), its cycles and the wall time earlier
runs of the same settings took; then the run order, the counts and the total. Nothing is written.
``--json`` prints the plan as JSON. ``lem resume SWEEP_DIR`` runs the study in that folder on with
the command that started it; without a folder it lists the unfinished studies under ``multirun/``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

PLAN_USAGE = """usage: lem plan [OVERRIDES ...] [-m] [--json]

The plan of the sweep `python -m lem -m OVERRIDES` would run, before anything runs: every job
(run, refused and why, or a duplicate of which job after resolution), its cycles, the order
(study.order, study.seed), the number of jobs and a wall-time estimate from earlier runs of the same
settings under outputs/ and multirun/. Nothing is written. Exit 2 when no job would run."""

RESUME_USAGE = """usage: lem resume [SWEEP_DIR]

Continue the study in SWEEP_DIR (a -m sweep's folder holding study.json) with the command that
started it: completed jobs are kept, failed, interrupted and not-started ones run, into the same
MLflow parent run. Refused when the command's jobs now resolve differently. Without SWEEP_DIR:
list the unfinished studies under ./multirun."""


def plan_main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(PLAN_USAGE)
        return 0
    as_json = "--json" in argv
    args = [a for a in argv if a not in ("-m", "--multirun", "--json")]
    if any(a.split("=", 1)[0] == "hparams_search" for a in args):
        print("lem: error: hparams_search: lem plan covers grid sweeps; an Optuna study's plan is its n_trials", file=sys.stderr)
        return 2
    from lem.errors import LemError

    try:
        plan, unfinished = _plan(args)
    except LemError as exc:
        print(f"lem: error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({"command": plan.command, "order": plan.order.value, "seed": plan.seed,
                          "points": [asdict(p) for p in plan.points], "visits": [asdict(v) for v in plan.visits],
                          "estimate_s": plan.estimate()[0], "jobs_without_estimate": plan.estimate()[1],
                          "continues": str(unfinished) if unfinished else None}, indent=1, default=str))
    else:
        from lem.study.report import plan_table

        print(plan_table(plan))
        if unfinished is not None:
            from lem.study.state import read_study

            visits = (read_study(unfinished) or {}).get("visits") or []
            done = sum(v.get("status") == "completed" for v in visits)
            print(f"`python -m lem -m` with these overrides continues the unfinished study in {unfinished} "
                  f"({done} of {len(visits)} jobs completed); study.resume=never starts a new one")
    return 0 if plan.runnable else 2


def _plan(args: list[str]) -> tuple[object, Path | None]:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from lem.config.compose import CONF_DIR
    from lem.config.hydra_errors import describe_config_exception
    from lem.config.schema import register_schema
    from lem.errors import LemError
    from lem.launch.run_dir import register_resolver
    from lem.study.prepare import plan_study, study_command, unfinished_under

    register_schema()
    register_resolver()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            gh = GlobalHydra.instance()
            config = gh.hydra.compose_config("config", overrides=args, run_mode=RunMode.MULTIRUN, with_log_configuration=False)  # type: ignore[union-attr]
            plan, _ = plan_study(config, gh.config_loader())
    except LemError:
        raise
    except Exception as exc:
        message = describe_config_exception(exc, CONF_DIR, args)
        if message is None:
            raise
        raise LemError(message) from exc
    return plan, unfinished_under(Path.cwd() / "multirun", study_command(args))


def resume_main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(RESUME_USAGE)
        return 0
    from lem.study.state import COMPLETED, read_study

    if not argv:
        studies = sorted(Path("multirun").glob("*/*/study.json"))
        unfinished = []
        for path in studies:
            data = read_study(path.parent) or {}
            visits = data.get("visits") or []
            done = sum(v.get("status") == COMPLETED for v in visits)
            if visits and done < len(visits):
                unfinished.append(f"  {path.parent}  {done} of {len(visits)} jobs completed  `python -m lem -m {' '.join(data.get('command') or [])}`")
        print("\n".join(["unfinished studies (lem resume SWEEP_DIR continues one):", *unfinished]) if unfinished else "no unfinished study under ./multirun")
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(f"lem: error: lem resume takes one sweep folder, got {' '.join(argv)}", file=sys.stderr)
        return 2
    sweep_dir = Path(argv[0]).resolve()
    data = read_study(sweep_dir)
    if data is None:
        print(f"lem: error: {argv[0]}: no lem study here (no readable study.json)", file=sys.stderr)
        return 2
    from lem.__main__ import run

    command = [a for a in data.get("command") or [] if not a.startswith(("hydra.sweep.dir=", "study.resume="))]
    run(["-m", *command, f"hydra.sweep.dir={sweep_dir}"])
    return 0
