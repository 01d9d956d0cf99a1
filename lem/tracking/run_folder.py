"""Read a finished run directory back: what it holds, its identity, its power timeline.

A run directory (raw records, ``summary.json``, the config Hydra saved, ``error.txt`` when the
run raised) is all lem logs from, live or later; a killed or refused run has parts missing,
so everything here reads tolerantly. Needs no MLflow.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ERROR_FILE = "error.txt"  # the traceback of a run that raised, kept in the run directory


# --- reading a run directory ------------------------------------------------------------------


@dataclass
class RunFolder:
    """What a run directory holds, read tolerantly (a killed or refused run has parts missing)."""

    path: Path
    summary: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)
    processes: list[Any] = field(default_factory=list)  # lem.results.reader.RawProcessRecords
    error_text: str | None = None
    job_num: int | None = None

    @property
    def has_results(self) -> bool:
        return self.summary is not None or bool(self.processes)


def is_run_dir(path: Path) -> bool:
    """A lem result folder: raw records or a summary, or the traceback and config of a run that failed early."""
    if (path / "raw").is_dir() or (path / "summary.json").is_file():
        return True
    return (path / ERROR_FILE).is_file() and ((path / "resolved_config.yaml").is_file() or (path / ".hydra").is_dir())


def read_run_folder(path: str | os.PathLike[str], config: Mapping[str, Any] | None = None) -> RunFolder:
    from lem.results.reader import read_run
    from lem.results.summarize import SUMMARY_FILE, compute_summary, load_config

    folder = RunFolder(path=Path(path).resolve())
    p = folder.path
    try:
        folder.config = dict(config) if config is not None else load_config(p)  # never resolved: not the reader's ${oc.env:...}
    except Exception:  # noqa: BLE001 - an unreadable config must not stop the rest
        folder.config = None
    if folder.config is not None:
        folder.config.pop("hydra", None)
    if (p / "raw").is_dir():
        try:
            folder.processes = read_run(p)
        except Exception:  # noqa: BLE001 - e.g. killed before the header: nothing to read
            folder.processes = []
    summary_file = p / SUMMARY_FILE
    if summary_file.is_file():
        try:
            folder.summary = json.loads(summary_file.read_text())
        except (OSError, ValueError):
            folder.summary = None
    if folder.summary is None and folder.processes:
        try:
            folder.summary = compute_summary(p, folder.config)  # late aggregation; nothing written
        except Exception:  # noqa: BLE001
            folder.summary = None
    folder.overrides = _read_overrides(p)
    if (p / ERROR_FILE).is_file():
        folder.error_text = (p / ERROR_FILE).read_text(errors="replace")
    folder.job_num = _hydra_job_num(p)
    return folder


def _read_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def _hydra_job_num(run_dir: Path) -> int | None:
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
        if data.get("hydra", {}).get("mode") != "MULTIRUN":
            return None
        num = data["hydra"]["job"].get("num")
        return int(num) if isinstance(num, int) or (isinstance(num, str) and num.isdigit()) else None
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None


def run_key(folder: RunFolder) -> str:
    """A run's identity in the store: a hash of its raw header lines (stable when the folder is
    copied or moved; unique per run, since a header holds the start time, host and pid), else
    of its path."""
    h = hashlib.sha256()
    raw = folder.path / "raw"
    files = sorted(raw.glob("process-*.jsonl")) if raw.is_dir() else []
    for f in files:
        with open(f, "rb") as fh:
            h.update(fh.readline())
    if not files:
        h.update(b"path:" + str(folder.path).encode())
    return h.hexdigest()[:32]


# --- the power/utilisation timeline ------------------------------------------------------------


TIMELINE_COLUMNS = (
    "process_index", "device", "component", "source", "t_s", "power_w", "energy_j",
    "sm_util_pct", "mem_util_pct", "sm_clock_mhz", "mem_clock_mhz", "temp_c", "throttle_reasons",
)


def power_columns(proc: Any) -> dict[str, dict[str, list[Any]]]:
    """A process's ``power_samples`` records, concatenated per device (they arrive in chunks)."""
    by_dev: dict[str, dict[str, list[Any]]] = {}
    for rec in proc.other:
        if rec.get("kind") != "power_samples":
            continue
        t = rec.get("t_s") or []
        cols = by_dev.setdefault(str(rec.get("device")), {"component": [rec.get("component")], "source": [rec.get("source")]})
        for col in TIMELINE_COLUMNS[4:]:  # t_s onwards: one value per sample
            values = rec.get(col)
            cols.setdefault(col, []).extend(values if isinstance(values, list) else [None] * len(t))
    return by_dev


def timeline_rows(processes: list[Any]) -> list[dict[str, Any]]:
    """Every power sample as a row on the run's clock (seconds since the earliest process t0)."""
    if not processes:
        return []
    t_ref = min(float(p.header.get("t0_unix_s", 0.0)) for p in processes)
    rows = []
    for p in processes:
        offset = float(p.header.get("t0_unix_s", 0.0)) - t_ref
        for dev, cols in power_columns(p).items():
            for i, t in enumerate(cols.get("t_s", [])):
                if t is None:
                    continue
                row = {"process_index": p.process_index, "device": dev, "component": cols["component"][0],
                       "source": cols["source"][0], "t_s": float(t) + offset}
                for col in TIMELINE_COLUMNS[5:]:
                    row[col] = cols[col][i] if i < len(cols[col]) else None
                rows.append(row)
    rows.sort(key=lambda r: (r["t_s"], r["process_index"], r["device"]))
    return rows


def phase_spans(processes: list[Any]) -> list[tuple[str, float, float]]:
    """(phase, start, end) on the run's clock, one span per phase over all processes."""
    if not processes:
        return []
    t_ref = min(float(p.header.get("t0_unix_s", 0.0)) for p in processes)
    spans: dict[str, list[float]] = {}
    for p in processes:
        offset = float(p.header.get("t0_unix_s", 0.0)) - t_ref
        for ph in p.phases:
            s, e = float(ph["start_s"]) + offset, float(ph["end_s"]) + offset
            cur = spans.setdefault(str(ph.get("name")), [s, e])
            cur[0], cur[1] = min(cur[0], s), max(cur[1], e)
        for rec in p.other:  # idle re-measured after generation; older runs measured idle outside any phase (no "when")
            if rec.get("kind") == "idle_baseline" and rec.get("start_s") is not None and rec.get("end_s") is not None:
                name = {"after_generation": "idle_recheck", None: "idle_baseline"}.get(rec.get("when"))
                if name is not None:
                    spans.setdefault(name, [float(rec["start_s"]) + offset, float(rec["end_s"]) + offset])
    return sorted(((n, s, e) for n, (s, e) in spans.items()), key=lambda x: x[1])


def write_timeline_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(TIMELINE_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in TIMELINE_COLUMNS})


def read_timeline_csv(path: Path) -> list[dict[str, Any]]:
    """A timeline CSV written by lem or by hand: needs a time column (t_s/time_s) and power_w."""
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            t = raw.get("t_s") or raw.get("time_s") or raw.get("elapsed_s")
            p = raw.get("power_w")
            try:
                row: dict[str, Any] = {"t_s": float(t), "power_w": float(p) if p not in (None, "") else None}
            except (TypeError, ValueError):
                continue
            row["device"] = raw.get("device") or raw.get("component") or "power"
            row["source"] = raw.get("source") or None
            rows.append(row)
    return rows
