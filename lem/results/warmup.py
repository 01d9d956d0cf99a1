"""The warmup part of the late aggregation: what each process's warmup ran and whether power settled."""

from __future__ import annotations

from typing import Any

from lem.results.reader import RawProcessRecords


def warmup_section(procs: list[RawProcessRecords], warnings: list[str]) -> dict[str, Any] | None:
    """Warmup per process (``WarmupRecord``), and a warning where it stopped before power was steady."""
    rows = [{"process_index": p.process_index, **{k: v for k, v in rec.items() if k != "kind"}} for p in procs for rec in p.others("warmup")[-1:]]
    if not rows:
        return None  # runs written before warmup was recorded
    for row in rows:
        if row.get("stable") is False:
            where = "" if len(procs) == 1 else f"process {row['process_index']}: "
            warnings.append(f"{where}warmup {row.get('criterion')}")
        elif row.get("passes") == 0:
            warnings.append("no warmup (run.warmup_batches=0): the first measured batch ran cold (compilation and caches included)")
    stable = [r.get("stable") for r in rows]
    return {
        "passes": sum(int(r.get("passes") or 0) for r in rows),
        "duration_s": max(float(r.get("duration_s") or 0.0) for r in rows),
        "stable": None if any(s is None for s in stable) else all(stable),
        "per_process": rows,
    }
