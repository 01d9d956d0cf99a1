"""The batch the engine actually ran, from a run's ``engine_steps`` records (late aggregation)."""

from __future__ import annotations

from typing import Any

from lem.results.reader import RawProcessRecords


def engine_steps_section(procs: list[RawProcessRecords]) -> dict[str, Any]:
    """What the engine actually ran per step (``engine_steps`` records): running and waiting
    requests, means weighted by the engine steps each row stands for; null without records."""
    running: list[int] = []
    waiting: list[int] = []
    weights: list[int] = []
    sources: set[str] = set()
    for p in procs:
        for rec in p.others("engine_steps"):
            sources.add(str(rec.get("source")))
            running.extend(int(v) for v in rec.get("running") or [])
            waiting.extend(int(v) for v in rec.get("waiting") or [])
            weights.extend(int(v) for v in rec.get("steps") or [])
    total = sum(weights)
    if not running or total <= 0:
        return {"source": None, "n_steps": None, "mean_running": None, "max_running": None, "mean_waiting": None, "max_waiting": None}
    return {
        "source": ", ".join(sorted(sources)),
        "n_steps": total,
        "mean_running": sum(r * w for r, w in zip(running, weights)) / total,
        "max_running": max(running),
        "mean_waiting": sum(q * w for q, w in zip(waiting, weights)) / total,
        "max_waiting": max(waiting),
    }
