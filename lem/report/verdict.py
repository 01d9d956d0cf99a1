"""A sweep's verdict: its jobs side by side, cheapest energy per token first, the best one named.

Printed at the end of every sweep (a plain Hydra ``-m`` multirun and an Optuna study alike) and
written into the sweep's MLflow parent run. Pure: rows in, text out.

A row is a dict with these keys (missing figures are None, never 0):

``num`` (job or trial number), ``label`` ("#3"), ``swept`` ({key: value text} of the swept
keys), ``status`` ("completed", "failed", "infeasible": an Optuna constraint violator,
"duplicate": an Optuna trial that reused an earlier one's results), ``duplicate_of``,
``j_per_token`` (gross), ``net_j_per_token``, ``tokens_per_s`` (output), ``ttft_p99_ms``,
``energy_source`` ("nvml", "estimated", ...), ``n_cycles``, ``run_id`` (MLflow), ``run_dir``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lem.report.numbers import DASH, fmt_num

STATUSES = ("completed", "failed", "infeasible", "duplicate")
NOISE_FRACTION = 0.05  # two one-cycle jobs closer than this in J/token are not told apart by one measurement
MAX_NOISE_LINES = 3
AUTO = "auto"  # ``best=AUTO``: name :func:`best_of`; a caller that knows better (a study) passes its row, or None


def row_from_summary(summary: Mapping[str, Any] | None, *, num: int | None, swept: Mapping[str, str],
                     status: str | None = None, **extra: Any) -> dict[str, Any]:
    """One verdict row from a job's ``summary.json`` (None: the job left none, it failed)."""
    summary = summary or {}
    energy = summary.get("energy") or {}
    latency = summary.get("latency") or {}
    cycles = summary.get("cycles") or {}
    goodput = summary.get("goodput") or {}
    if status is None:
        status = "completed" if summary and summary.get("status") in (None, "completed") else "failed"
    row = {
        "num": num,
        "label": f"#{num}" if num is not None else "?",
        "swept": dict(swept),
        "status": status,
        "duplicate_of": None,
        "j_per_token": energy.get("j_per_output_token"),
        "net_j_per_token": energy.get("net_j_per_output_token"),
        "tokens_per_s": (summary.get("throughput") or {}).get("output_tokens_per_s"),
        "ttft_p99_ms": (latency.get("ttft_ms") or {}).get("p99"),
        "j_per_good_token": goodput.get("j_per_good_output_token"),  # with slo.*: energy per token of requests that met it
        "good_fraction": goodput.get("good_fraction"),
        "energy_source": energy.get("source"),
        "n_cycles": cycles.get("n_cycles") if isinstance(cycles, Mapping) else None,
        "run_id": None,
        "run_dir": None,
    }
    row.update(extra)
    return row


def _j(row: Mapping[str, Any]) -> float | None:
    value = row.get("j_per_token")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def ranked(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """J/token ascending; rows without J/token after those with it; failed rows last; ties by number;
    a duplicate right after the row it repeats."""
    by_num = {r.get("num"): r for r in rows if r.get("status") != "duplicate"}

    def own(r: Mapping[str, Any]) -> tuple[bool, bool, float, int]:
        j = _j(r)
        return (r.get("status") == "failed", j is None, j if j is not None else 0.0, r.get("num") if r.get("num") is not None else 1 << 30)

    def key(r: Mapping[str, Any]) -> tuple[tuple[bool, bool, float, int], bool, int]:
        original = by_num.get(r.get("duplicate_of")) if r.get("status") == "duplicate" else None
        return (own(original), True, own(r)[3]) if original is not None else (own(r), False, 0)

    return sorted(rows, key=key)


def fold_duplicates(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Duplicates of a listed row dropped, that row's status saying how often it was asked again."""
    listed = {r.get("num") for r in rows if r.get("status") != "duplicate"}
    repeats: dict[Any, int] = {}
    for r in rows:
        if r.get("status") == "duplicate" and r.get("duplicate_of") in listed:
            repeats[r["duplicate_of"]] = repeats.get(r["duplicate_of"], 0) + 1
    return [{**r, "repeats": repeats[r.get("num")]} if r.get("num") in repeats else r
            for r in rows if not (r.get("status") == "duplicate" and r.get("duplicate_of") in listed)]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: higher x (throughput) and lower y (J/token or latency)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 >= x and y2 <= y) and (x2 > x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_flags(rows: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Per row: on the Pareto front of the completed jobs (least J/token, most output tok/s)."""
    usable = [i for i, r in enumerate(rows)
              if r.get("status") == "completed" and _j(r) is not None and r.get("tokens_per_s") is not None]
    front = pareto_front([(float(rows[i]["tokens_per_s"]), float(rows[i]["j_per_token"])) for i in usable])
    on_front = {usable[k] for k in front}
    return [i in on_front for i in range(len(rows))]


def best_of(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The completed job with the least J/token (the lowest number on a tie); when no job measured
    energy, the one with the most output tok/s; None when no job completed."""
    done = [r for r in rows if r.get("status") == "completed"]
    with_j = [r for r in done if _j(r) is not None]
    if with_j:
        return ranked(with_j)[0]
    with_tps = [r for r in done if r.get("tokens_per_s") is not None]
    return max(with_tps, key=lambda r: (float(r["tokens_per_s"]), -(r.get("num") or 0))) if with_tps else None


def swept_text(row: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in (row.get("swept") or {}).items())


def headline_text(row: Mapping[str, Any]) -> str:
    """``0.123 J/token gross, 0.045 net (nvml) · 210 tok/s · TTFT p99 35.2 ms``"""
    source = row.get("energy_source") or "not measured"
    energy = f"{fmt_num(row.get('j_per_token'))} J/token gross, {fmt_num(row.get('net_j_per_token'))} net ({source})"
    if row.get("good_fraction") is not None and row.get("j_per_good_token") is None:
        energy += " · no request met the latency objectives"
    elif row.get("good_fraction") is not None:
        energy += f" · {fmt_num(row.get('j_per_good_token'))} J per good token ({_percent(row['good_fraction'])} of requests good)"
    return f"{energy} · {fmt_num(row.get('tokens_per_s'))} tok/s · TTFT p99 {fmt_num(row.get('ttft_p99_ms'))} ms"


def _percent(fraction: Any) -> str:
    return f"{100 * float(fraction):.0f} %" if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) else DASH


def best_line(row: Mapping[str, Any] | None, *, what: str = "job", why: str = "least J/token") -> str:
    """``best job #3 (least J/token): batching.batch_size=8 — <headline>; MLflow run <id>; folder <dir>``"""
    if row is None:
        return f"best {what}: none (no {what} completed)"
    if why == "least J/token" and _j(row) is None:
        why = "most tok/s; J/token not measured"
    parts = [f"best {what} {row.get('label')} ({why}): {swept_text(row) or '(nothing swept)'} — {headline_text(row)}"]
    if row.get("run_id"):
        parts.append(f"MLflow run {row['run_id']}")
    if row.get("run_dir"):
        parts.append(f"folder {row['run_dir']}")
    return "; ".join(parts)


def noise_warnings(rows: Sequence[Mapping[str, Any]], fraction: float = NOISE_FRACTION) -> list[str]:
    """Neighbours in J/token (completed, one measured cycle each) closer than ``fraction``: one
    measurement cannot order them."""
    done = ranked([r for r in rows if r.get("status") == "completed" and (_j(r) or 0.0) > 0])
    out = []
    for a, b in zip(done, done[1:]):
        if (a.get("n_cycles") or 1) > 1 or (b.get("n_cycles") or 1) > 1:
            continue
        apart = (float(b["j_per_token"]) - float(a["j_per_token"])) / float(a["j_per_token"])
        if apart < fraction:
            out.append(f"jobs {a['label']} and {b['label']} differ by {100 * apart:.1f} % in J/token from one cycle each: "
                       "within run-to-run noise; set cycles=3 or more to separate them")
    if len(out) > MAX_NOISE_LINES:
        out = [*out[:MAX_NOISE_LINES], f"... and {len(out) - MAX_NOISE_LINES} more such pair(s)"]
    return out


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Column names: a key's last dotted part where that is unambiguous (``batch_size``), else the key."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def energy_sources(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({str(r["energy_source"]) for r in rows if r.get("energy_source") and _j(r) is not None})


def energy_line(rows: Sequence[Mapping[str, Any]], what: str = "job") -> str:
    """``energy: nvml``; an estimate always says so, and which rows it covers when sources are mixed."""
    sources = energy_sources(rows)
    if not sources:
        return "energy: not measured"
    if "estimated" not in sources:
        return f"energy: {', '.join(sources)}"
    why = "a model's figure from device specs, not a sensor reading"
    if len(sources) == 1:
        return f"energy: estimated ({why})"
    labels = ", ".join(str(r.get("label")) for r in rows if r.get("energy_source") == "estimated" and _j(r) is not None)
    return f"energy: {', '.join(s for s in sources if s != 'estimated')}; estimated for {what}s {labels} ({why})"


def j_header(rows: Sequence[Mapping[str, Any]]) -> str:
    """The J/token column's name, saying "estimated" whenever any figure in it is an estimate."""
    sources = energy_sources(rows)
    if sources == ["estimated"]:
        return "J/tok (estimated)"
    return "J/tok (est. = estimated)" if "estimated" in sources else "J/tok"


def status_text(row: Mapping[str, Any]) -> str:
    if row.get("status") == "duplicate" and row.get("duplicate_of") is not None:
        return f"duplicate of #{row['duplicate_of']}"
    repeats = row.get("repeats")
    return f"{row.get('status')} (+{repeats} duplicate{'s' if repeats != 1 else ''})" if repeats else str(row.get("status"))


def _j_cell(row: Mapping[str, Any], mixed: bool) -> str:
    text = fmt_num(row.get("j_per_token"))
    return f"{text} est." if mixed and row.get("energy_source") == "estimated" and text != DASH else text


def render_verdict(rows: Sequence[Mapping[str, Any]], *, title: str = "lem sweep verdict", best: Mapping[str, Any] | str | None = AUTO,
                   what: str = "job", why: str = "least J/token") -> str:
    """The table (sorted by J/token, Pareto rows marked ``*``), the best line, the energy source and
    the noise warnings. ``best``: the row to name (default :func:`best_of`), e.g. a study's best trial; None: no best."""
    if not rows:
        return f"{title}: no {what}s"
    ordered = ranked(fold_duplicates(rows))  # the HTML report lists each duplicate; a terminal table stays short
    flags = pareto_flags(ordered)
    keys = list(dict.fromkeys(k for r in ordered for k in (r.get("swept") or {})))
    names = short_keys(keys)
    sources = energy_sources(ordered)
    mixed = "estimated" in sources and len(sources) > 1
    slo = any(r.get("good_fraction") is not None for r in ordered)  # latency objectives set: their figures beside
    header = [what, *[names[k] for k in keys], j_header(ordered), "net J/tok", *(["J/good tok", "good"] if slo else []),
              "tok/s", "TTFT p99 ms", "status", "Pareto"]
    body = [
        [r.get("label") or "?", *[str((r.get("swept") or {}).get(k, DASH)) for k in keys], _j_cell(r, mixed),
         fmt_num(r.get("net_j_per_token")), *([fmt_num(r.get("j_per_good_token")), _percent(r.get("good_fraction"))] if slo else []),
         fmt_num(r.get("tokens_per_s")), fmt_num(r.get("ttft_p99_ms")), status_text(r), "*" if flag else ""]
        for r, flag in zip(ordered, flags)
    ]
    n_failed = sum(r.get("status") == "failed" for r in rows)
    n_dup = sum(r.get("status") == "duplicate" for r in rows)
    counts = f"{len(rows)} {what}s, {n_failed} failed" + (f", {n_dup} duplicates" if n_dup else "")
    out = [f"{title}: {counts} (sorted by J/token, least first)"]
    out += _aligned([header, *body], left=1 + len(keys))
    out.append(f"  * Pareto-optimal: no other completed {what} has both less J/token and more tok/s")
    out.append(best_line(best_of(ordered) if best == AUTO else best, what=what, why=why))  # type: ignore[arg-type]
    out.append(energy_line(ordered, what))
    out += [f"warning: {line}" for line in noise_warnings(ordered)]
    return "\n".join(out)


def _aligned(table: Sequence[Sequence[str]], left: int) -> list[str]:
    """Columns padded to width: the first ``left`` (labels, swept values) to the left, figures to the right."""
    widths = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
    return [
        ("  " + "  ".join(f"{c:<{w}}" if i < left or i >= len(widths) - 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths)))).rstrip()
        for r in table
    ]
