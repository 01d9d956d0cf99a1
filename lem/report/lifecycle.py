"""A sweep's jobs side by side over the inference lifecycle: what setting the engine up cost (engine
init + model load + warmup) against what it then spent per generated token.

Optimised engines tend to pay more up front and less per token; which one costs less in all depends
on how many tokens the deployment serves before it restarts, so both halves are shown, with the
break-even point against the first job. Printed at the end of every multirun
(``lem.tracking.verdict_callback.SweepTableCallback``) from the jobs' ``summary.json`` alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.report.numbers import fmt_num
from lem.report.table import grid

SETUP_PHASES = ("engine_init", "model_load", "warmup")


def lifecycle_row(label: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    """One job's setup and generation figures (None where the run has none)."""
    phases = summary.get("phases") or {}
    setup = [phases[name] for name in SETUP_PHASES if name in phases]
    energies = [p.get("energy_j") for p in setup]
    energy = summary.get("energy") or {}
    latency = summary.get("latency") or {}
    return {
        "label": label,
        "engine_reused": "engine_init" not in phases,  # a reused engine's setup was paid by an earlier job
        "setup_s": sum(float(p.get("wall_s") or 0.0) for p in setup) if setup else None,
        "setup_j": sum(energies) if setup and all(e is not None for e in energies) else None,
        "j_per_token": energy.get("j_per_output_token"),
        "net_j_per_token": energy.get("net_j_per_output_token"),
        "tokens_per_s": (summary.get("throughput") or {}).get("output_tokens_per_s"),
        "ttft_p50_ms": (latency.get("ttft_ms") or {}).get("p50"),
        "tpot_p50_ms": (latency.get("tpot_ms") or {}).get("p50"),
        "energy_source": energy.get("source"),
    }


def break_even_tokens(row: Mapping[str, Any], reference: Mapping[str, Any]) -> float | None:
    """Output tokens after which ``row``'s setup plus generation costs less energy than ``reference``'s;
    None when it never does (not cheaper per token) or a figure is missing."""
    setup, ref_setup = row.get("setup_j"), reference.get("setup_j")
    per_token, ref_per_token = row.get("j_per_token"), reference.get("j_per_token")
    if None in (setup, ref_setup, per_token, ref_per_token) or per_token >= ref_per_token:
        return None
    return max(0.0, (setup - ref_setup) / (ref_per_token - per_token))


def render_lifecycle(rows: Sequence[Mapping[str, Any]]) -> str:
    header = ("job", "setup s", "setup J", "gen J/tok", "net J/tok", "tok/s", "TTFT p50 ms", "TPOT p50 ms", "pays off after")
    body = []
    for row in rows:
        even = break_even_tokens(row, rows[0]) if row is not rows[0] else None
        body.append((
            row["label"] + (" (engine reused)" if row["engine_reused"] else ""),
            fmt_num(row["setup_s"]), fmt_num(row["setup_j"]), fmt_num(row["j_per_token"]), fmt_num(row["net_j_per_token"]),
            fmt_num(row["tokens_per_s"]), fmt_num(row["ttft_p50_ms"]), fmt_num(row["tpot_p50_ms"]),
            "—" if even is None else f"{fmt_num(even)} tok",
        ))
    out: list[str] = []
    grid(out, "lem sweep: setup against generation, per job", header, body)
    sources = sorted({str(r["energy_source"]) for r in rows if r["energy_source"]})
    out.append(
        f"  energy: {', '.join(sources) or 'not measured'}; setup = engine init + model load + warmup; "
        f"'pays off after': output tokens after which the job's setup plus generation energy falls below {rows[0]['label']}'s"
    )
    return "\n".join(out).lstrip("\n")


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder of ``sweep_dir`` that has a summary, in job order, labelled by its overrides."""
    found: list[tuple[Path, dict[str, Any], list[str]]] = []
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for job in jobs:
        summary_path = job / "summary.json"
        if not summary_path.is_file():
            continue
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        found.append((job, summary, _overrides(job)))
    # Label each job by what sets it apart: the overrides not shared by every job.
    shared = set.intersection(*(set(items) for _, _, items in found)) if len(found) > 1 else set()
    rows = []
    for job, summary, items in found:
        label = " ".join(item for item in items if item not in shared)
        rows.append(lifecycle_row(label or str((summary.get("run") or {}).get("engine") or job.name), summary))
    return rows


def _overrides(job: Path) -> list[str]:
    try:
        import yaml

        return [str(item) for item in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []]
    except (OSError, ValueError):
        return []


def verdict_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One verdict row (:mod:`lem.report.verdict`) per job folder of ``sweep_dir``, failed ones included,
    each with its swept values (the overrides whose values differ between jobs) and its folder."""
    from lem.report.verdict import row_from_summary

    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    found = []
    for job in jobs:
        try:
            summary = json.loads((job / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            summary = None
        values = dict(item.split("=", 1) for item in _overrides(job) if "=" in item)
        found.append((job, summary, {k.lstrip("+~"): v for k, v in values.items()}))
    keys = list(dict.fromkeys(k for _, _, values in found for k in values))
    swept = [k for k in keys if len({values.get(k) for _, _, values in found}) > 1]
    rows = []
    for job, summary, values in found:
        status = "failed" if (job / "error.txt").is_file() else None  # a job that raised after writing its summary
        rows.append(row_from_summary(summary, num=int(job.name), swept={k: values.get(k, "—") for k in swept},
                                     status=status, run_dir=str(job)))
    return rows
