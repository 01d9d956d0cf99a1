"""Recompute a run's ``summary.json`` from its raw records: ``lem summarize RUN_DIR...``.

The pipeline calls :func:`write_summary` at the end of a run; the CLI does the same later,
so a summary can always be rebuilt (after a crash, or after the aggregation improves).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.errors import LemError
from lem.results.aggregate import summarize, summarize_with_request_energy
from lem.results.reader import read_run
from lem.results.writer import write_json_atomic, write_jsonl_atomic

SUMMARY_FILE = "summary.json"
# Each request's energy at the three boundaries and its prefill/decode/waiting parts (lem.results.request_energy).
REQUEST_ENERGY_FILE = "request_energy.jsonl"
# The copy resolved at run time first; Hydra's own (interpolations as written) when it is missing.
CONFIG_FILES: tuple[str, ...] = ("resolved_config.yaml", ".hydra/config.yaml")


def load_config(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's composed config as a plain dict, or None when the run directory has none."""
    for name in CONFIG_FILES:
        path = Path(run_dir) / name
        if path.is_file():
            return _load_yaml(path)
    return None


def _load_yaml(path: Path) -> dict[str, Any]:
    from omegaconf import (
        OmegaConf,  # a Hydra dependency; imported here to keep the module light
    )

    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user problem
        raise LemError(f"cannot read config {path}: {e}") from None
    # Never resolved here: ${oc.env:...} would read the environment of whoever summarizes, not the run's.
    data = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(data, dict):
        raise LemError(f"config {path} is not a mapping")
    return {str(k): v for k, v in data.items()}


def compute_summary(run_dir: str | os.PathLike[str], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary of ``run_dir`` from its raw records, without writing anything."""
    processes = read_run(run_dir)
    return _with_study(summarize(processes, dict(config) if config is not None else load_config(run_dir)), run_dir)


def _with_study(summary: dict[str, Any], run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``summary.study``: where the run stood in its study (``study_visit.json``, lem.study.state), when it ran in one."""
    from lem.study.visit import read_visit_file

    visit = read_visit_file(Path(run_dir))
    if visit is not None:
        summary["study"] = visit
    return summary


def write_summary(run_dir: str | os.PathLike[str], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Recompute ``<run_dir>/summary.json`` and ``request_energy.jsonl`` from the raw records (atomically) and return the summary."""
    summary, request_energy = summarize_with_request_energy(read_run(run_dir), dict(config) if config is not None else load_config(run_dir))
    summary = _with_study(summary, run_dir)
    write_jsonl_atomic(Path(run_dir) / REQUEST_ENERGY_FILE, request_energy)
    write_json_atomic(Path(run_dir) / SUMMARY_FILE, summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    from lem.report.table import render_summary, terminal_width

    parser = argparse.ArgumentParser(
        prog="lem summarize",
        description="Recompute summary.json of one or more lem runs from their raw records and print it.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run directory (holds raw/process-<i>.jsonl)")
    parser.add_argument("--no-write", action="store_true", help="print the summary only; leave summary.json untouched")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON (machine-readable) instead of the table")
    args = parser.parse_args(argv)

    failed = 0
    for i, run_dir in enumerate(args.run_dirs):
        try:
            summary = compute_summary(run_dir) if args.no_write else write_summary(run_dir)
        except LemError as e:
            print(f"lem.summarize: {run_dir}: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(summary, indent=1))
            continue
        if len(args.run_dirs) > 1:
            print(("\n" if i else "") + f"== {run_dir}")
        print(render_summary(summary, width=terminal_width()))
        if not args.no_write:
            print(f"\nwrote {Path(run_dir) / SUMMARY_FILE}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
