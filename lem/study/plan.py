"""A study's plan, made before anything runs: every point of the sweep, validated, deduplicated, ordered.

The points are Hydra's cartesian product of the command's sweep overrides (``hydra.sweeper.params``
first, as Hydra's basic sweeper does). Each is composed the way its job will be, and validated
(``lem.config.checks.validate``): a point lem would refuse is named with the reason before any
job starts. Points whose resolved settings are identical (``lem.study.identity``) measure the
same thing: the first runs, the others are skipped with a pointer to it. The runnable points'
cycles are then laid out in time (``lem.study.order``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lem.config.types import StudyOrder
from lem.study.order import Visit, order_visits

RUN, REFUSED, DUPLICATE = "run", "refused", "duplicate"
# Keys a study reads once for all its points: sweeping them is refused.
STUDY_WIDE = ("study.", "hydra.")


@dataclass
class Point:
    """One configuration of the sweep, in the declared (cartesian) order."""

    index: int
    overrides: list[str]
    status: str = RUN  # run | refused | duplicate
    reason: str | None = None  # why it is refused
    duplicate_of: int | None = None  # the point that stands for it
    key: str | None = None  # lem.study.identity.run_key
    settings_key: str | None = None
    settings: dict[str, Any] | None = None  # effective settings, to tell a changed study on resume
    cycles: int = 1
    estimate_s: float | None = None  # all its jobs, from earlier runs of the same settings (lem.study.estimate)


@dataclass
class Plan:
    command: list[str]  # the overrides as typed (the sweep's identity for a resume)
    points: list[Point]
    order: StudyOrder
    seed: int
    visits: list[Visit] = field(default_factory=list)  # Visit.point is a Point.index

    @property
    def runnable(self) -> list[Point]:
        return [p for p in self.points if p.status == RUN]

    def point(self, index: int) -> Point:
        return self.points[index]

    def visit_overrides(self, visit: Visit) -> list[str]:
        """The job's overrides: its point's, plus ``cycles=1`` when its cycles are spread across the study."""
        point = self.points[visit.point]
        return point.overrides + ([] if visit.cycle is None else ["cycles=1"])

    def visit_cycles(self, visit: Visit) -> int:
        return self.points[visit.point].cycles if visit.cycle is None else 1

    def estimate(self) -> tuple[float, int]:
        """Seconds the visits with an estimate take (their point's per-cycle figure), and how many have none."""
        total, unknown = 0.0, 0
        for v in self.visits:
            p = self.points[v.point]
            if p.estimate_s is None:
                unknown += 1
            else:  # estimate_s covers all the point's jobs: one of its spread cycles is a share of it
                total += p.estimate_s if v.cycle is None else p.estimate_s / max(p.cycles, 1)
        return total, unknown


def expand(arguments: Sequence[str], params: dict[str, str] | None = None) -> list[list[str]]:
    """Every job's overrides, in Hydra's basic sweeper's order (its cartesian product)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    parsed = OverridesParser.create().parse_overrides(lines)
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override() and key.lstrip("+~").startswith(STUDY_WIDE):
            from lem.errors import LemError

            raise LemError(f"{key}: one value for the whole study, not a sweep ({override.input_line})")
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def make_plan(
    arguments: Sequence[str],
    compose: Callable[[list[str]], Any],
    *,
    order: StudyOrder,
    seed: int,
    params: dict[str, str] | None = None,
    describe_error: Callable[[BaseException, list[str]], str] | None = None,
    estimates: Callable[[str, int], float | None] | None = None,
) -> Plan:
    """Compose and validate every point of the sweep, find duplicates, order the runnable points' cycles.

    ``compose(overrides)`` returns the job's composed config (Hydra's config loader);
    ``describe_error`` turns an exception into lem's one line; ``estimates(settings_key, cycles)``
    gives the seconds a job of these settings took before (:class:`lem.study.estimate.Estimator`).
    """
    from lem.study.identity import effective_settings, run_key, settings_key

    points = [Point(index=i, overrides=list(o)) for i, o in enumerate(expand(arguments, params))]
    first_of: dict[str, int] = {}
    for point in points:
        try:
            cfg = validated(compose(point.overrides))
        except Exception as exc:  # noqa: BLE001 - each refusal is one line in the plan
            point.status, point.reason = REFUSED, describe_error(exc, point.overrides) if describe_error else str(exc)
            continue
        point.cycles = cfg.cycles
        point.key, point.settings_key, point.settings = run_key(cfg), settings_key(cfg), effective_settings(cfg)
        if point.key in first_of:
            point.status, point.duplicate_of = DUPLICATE, first_of[point.key]
            continue
        first_of[point.key] = point.index
        if estimates is not None:  # a spread configuration runs one job per cycle, each with its own setup
            one_job = estimates(point.settings_key, point.cycles if order is StudyOrder.grouped else 1)
            point.estimate_s = None if one_job is None else one_job * (1 if order is StudyOrder.grouped else point.cycles)
    plan = Plan(command=list(arguments), points=points, order=order, seed=seed)
    runnable = plan.runnable
    visits = order_visits([p.cycles for p in runnable], order, seed)
    plan.visits = [Visit(v.position, runnable[v.point].index, v.cycle, v.round, runnable[v.point].index if v.cycle is None else v.position)
                   for v in visits]
    return plan


def validated(composed: Any) -> Any:
    """The job's LemConfig from its composed config, validated (raises lem's errors)."""
    from omegaconf import OmegaConf, open_dict

    from lem.config.checks import validate
    from lem.config.schema import to_dataclass

    node = OmegaConf.create(OmegaConf.to_container(composed, resolve=False)) if "hydra" in composed else composed
    if "hydra" in node:
        with open_dict(node):
            del node["hydra"]  # resolving it would claim output folders
    cfg = to_dataclass(node)
    validate(cfg)
    return cfg
