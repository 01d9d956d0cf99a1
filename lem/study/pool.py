"""Each configuration's cycles pooled across a study whose cycles were spread (``study.order`` other than grouped).

Every such cycle ran as its own job (one cycle each, in its own folder); its generation phase and
requests are read back and numbered with the configuration's cycle, and the same statistics a
job's own cycles get (``lem.results.cycles``: per-cycle headline metrics, mean, std, Student-t
95 % CI) are computed over them. Each per-cycle row also says which job ran it and when.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lem.study.state import COMPLETED, StudyState


def pooled_configs(state: StudyState) -> list[dict[str, Any]]:
    """One entry per configuration with spread cycles: its completed cycles' rows and statistics."""
    from lem.results.cycles import cycle_rows, cycle_statistics
    from lem.results.reader import read_run
    from lem.study.report import short_overrides

    by_point: dict[int, list[dict[str, Any]]] = {}
    for v in state.data["visits"]:
        if v.get("cycle") is not None and v["status"] == COMPLETED:
            by_point.setdefault(int(v["point"]), []).append(v)
    out = []
    for point, visits in sorted(by_point.items()):
        procs, when = [], {}
        for v in visits:
            run_dir = state.sweep_dir / str(v["job"])
            try:
                read = read_run(run_dir)
            except Exception:  # noqa: BLE001 - a folder that cannot be read adds no cycle
                continue
            for p in read:
                procs.append(_relabelled(p, int(v["cycle"])))
            when[int(v["cycle"])] = {"job": v["job"], "position": v["position"], "started_unix_s": v.get("started_unix_s")}
        warnings: list[str] = []
        section = cycle_statistics(cycle_rows(procs), warnings)
        for row in section["per_cycle"]:
            row.update(when.get(int(row["cycle"]), {}))
        overrides = short_overrides([p["overrides"] for p in state.data["points"]], state.data["points"][point]["overrides"])
        out.append({"point": point, "overrides": overrides, "jobs": [v["job"] for v in visits], "warnings": warnings, **section})
    return out


def _relabelled(proc: Any, cycle: int) -> Any:
    phases = [{**ph, "cycle": cycle} if ph.get("name") == "generation" else ph for ph in proc.phases]
    requests = [{**r, "cycle": cycle} for r in proc.requests]
    return dataclasses.replace(proc, phases=phases, requests=requests)
