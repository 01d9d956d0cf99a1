"""What a study says on the terminal: its plan (``lem plan``, and one line when a sweep starts) and,
when its cycles were spread, each configuration's pooled cycles at the end."""

from __future__ import annotations

from typing import Any

from lem.study.plan import DUPLICATE, REFUSED, Plan


def swept_keys(points: list[list[str]]) -> list[str]:
    """Override keys whose value differs between the points' overrides (what tables show of each)."""
    values: dict[str, set[str]] = {}
    for overrides in points:
        for o in overrides:
            k, _, v = o.partition("=")
            values.setdefault(k, set()).add(v)
    return [k for k, v in values.items() if len(v) > 1]


def short_overrides(points: list[list[str]], overrides: list[str]) -> str:
    keys = swept_keys(points)
    return " ".join(o for o in overrides if o.partition("=")[0] in keys) or " ".join(overrides) or "(defaults)"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def counts_line(plan: Plan) -> str:
    """``6 configurations → 1 refused → 1 duplicate → 4 × 3 cycles = 12 runs (interleaved, seed 0)``."""
    refused = sum(p.status == REFUSED for p in plan.points)
    dupes = sum(p.status == DUPLICATE for p in plan.points)
    runnable = plan.runnable
    cycles = sorted({p.cycles for p in runnable})
    per = f"{cycles[0]} cycle{'s' if cycles[0] != 1 else ''}" if len(cycles) == 1 else f"{'/'.join(map(str, cycles))} cycles"
    jobs = len(plan.visits)
    spread = any(v.cycle is not None for v in plan.visits)
    how = f"{jobs} job{'s' if jobs != 1 else ''}" + (" of one cycle each" if spread else "")
    order = plan.order.value + (f", seed {plan.seed}" if plan.order.value in ("shuffled", "latin_square") else "")
    return (f"{len(plan.points)} configuration{'s' if len(plan.points) != 1 else ''} declared → {refused} refused → "
            f"{dupes} duplicate{'s' if dupes != 1 else ''} → {len(runnable)} × {per} = {how} ({order})")


def estimate_line(plan: Plan) -> str:
    total, unknown = plan.estimate()
    if unknown == len(plan.visits):
        return "wall time: no estimate (no earlier run of these settings on this machine)"
    text = f"wall time ≥ {duration(total)} from earlier runs of the same settings (their measured phases)"
    return text + (f"; {unknown} job{'s' if unknown != 1 else ''} without an estimate not counted" if unknown else "")


def start_line(plan: Plan) -> str:
    dupes = [p for p in plan.points if p.status == DUPLICATE]
    same = "".join(f"; job {p.index} = job {p.duplicate_of}" for p in dupes[:3]) + ("; ..." if len(dupes) > 3 else "")
    return f"lem: study: {counts_line(plan)}{' (duplicates skipped' + same + ')' if dupes else ''}; {estimate_line(plan)}"


def plan_table(plan: Plan) -> str:
    """Every point: what happens to it, its cycles, the estimate, its overrides; then the run order."""
    rows = [("job", "plan", "cycles", "estimate", "overrides")]
    for p in plan.points:
        if p.status == REFUSED:
            what, cycles, est = "refused", "", ""
        elif p.status == DUPLICATE:
            what, cycles, est = f"= job {p.duplicate_of}", "", ""
        else:
            what, cycles, est = "run", str(p.cycles), duration(p.estimate_s) if p.estimate_s is not None else "?"
        rows.append((str(p.index), what, cycles, est, short_overrides([q.overrides for q in plan.points], p.overrides)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    for p in plan.points:
        if p.status == REFUSED:
            lines.append(f"job {p.index} refused: {p.reason}")
    if any(v.cycle is not None for v in plan.visits):
        sequence = " ".join(f"{v.point}.{v.cycle}" for v in plan.visits)
        lines.append(f"run order (job.cycle; each its own job, numbered in this order): {sequence}")
    return "\n".join(lines + [counts_line(plan), estimate_line(plan)])


POOLED_COLUMNS = ("j_per_output_token", "output_tokens_per_s", "mean_power_w", "ttft_ms_p99", "tpot_ms_p50")


def pooled_rows(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per configuration (``sweep/configs.csv``): its cycles, jobs and each metric's mean and CI."""
    rows = []
    for c in configs:
        row: dict[str, Any] = {"job": c["point"], "overrides": c["overrides"], "n_cycles": c["n_cycles"],
                               "jobs": " ".join(map(str, c["jobs"]))}
        for metric in POOLED_COLUMNS:
            s = (c.get("stats") or {}).get(metric) or {}
            row.update({f"{metric}_mean": s.get("mean"), f"{metric}_ci95_low": s.get("ci95_low"), f"{metric}_ci95_high": s.get("ci95_high")})
        rows.append(row)
    return rows


def pooled_table(configs: list[dict[str, Any]]) -> str:
    """Each configuration's cycles pooled across the study: J/token and tokens/s, mean and 95 % CI; * the least J/token."""
    means = {c["point"]: ((c.get("stats") or {}).get("j_per_output_token") or {}).get("mean") for c in configs}
    known = {k: v for k, v in means.items() if v is not None}
    best = min(known, key=known.__getitem__) if known else None
    lines = ["lem: each configuration's cycles, pooled across the study (mean [95 % CI]; * least J/token):"]
    for c in configs:
        stats = c.get("stats") or {}
        parts = []
        for metric, label, fmt in (("j_per_output_token", "J/token", "{:.4g}"), ("output_tokens_per_s", "tok/s", "{:.4g}")):
            s = stats.get(metric) or {}
            if s.get("mean") is None:
                continue
            ci = f" [{fmt.format(s['ci95_low'])}, {fmt.format(s['ci95_high'])}]" if s.get("ci95_low") is not None else ""
            parts.append(f"{label} {fmt.format(s['mean'])}{ci}")
        mark = "*" if c["point"] == best else " "
        lines.append(f" {mark}job {c['point']} ({c['overrides']}): {c['n_cycles']} cycle(s), jobs {','.join(map(str, c['jobs']))}: "
                     + (", ".join(parts) or "no metrics"))
    return "\n".join(lines)
