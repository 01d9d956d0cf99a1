"""``python -m lem export``: the runs of an experiment as CSV, one row per run.

From the MLflow store (``--filter`` takes MLflow's search syntax, e.g.
``params.batching.batch_size = '8'``), or straight from result folders with ``--from-dirs``
(no MLflow needed). Columns: identity (run id, name, status, parent, sweep), the params that
tell deployments apart, and the headline metrics with their units in the names; ``--all``
adds every param and metric. A figure nothing measured is an empty cell, never 0.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from lem.tracking.metrics import HEADLINE_METRICS
from lem.tracking.store import (
    DEFAULT_EXPERIMENT,
    Target,
    TrackingUnavailable,
    resolve_tracking_uri,
    search_all_runs,
)

KEY_PARAMS = (
    "model.name_or_path",
    "backend.name",
    "batching.strategy",
    "batching.batch_size",
    "batching.max_tokens_per_batch",
    "precision.dtype",
    "precision.quantization",
    "sharding.strategy",
    "decoder.preset",
    "traffic.arrival",
    "traffic.target_qps",
    "dataset.source",
    "dataset.n_prompts",
    "dataset.max_output_tokens",
)
# Metric columns every export has: the headline first (lem.tracking.metrics.HEADLINE_METRICS), then the
# figures that put it in context.
EXPORT_METRICS = (
    *HEADLINE_METRICS,
    "energy/j_per_request",
    "energy/mean_power_w",
    "energy/phase/generation_j",
    "energy/run_energy_j",
    "throughput/total_tokens_per_s",
    "throughput/requests_per_s",
    "latency/tpot_ms_p99",
    "latency/e2e_ms_p50",
    "latency/e2e_ms_p99",
    "flops/useful_flops_per_output_token",
    "flops/executed_flops_per_output_token",
    "memory/peak_rss_bytes",
)
ID_COLUMNS = ("run_id", "run_name", "status", "start_time", "parent_run_id", "sweep_id", "energy_source", "device", "run_dir")
PARAM_PREFIX, METRIC_PREFIX = "params.", "metrics."


def _iso(ms: int | None) -> str:
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).isoformat(timespec="seconds")


def _row(ids: Mapping[str, Any], params: Mapping[str, str], metrics: Mapping[str, float], all_columns: bool) -> dict[str, Any]:
    row: dict[str, Any] = dict(ids)
    for key in KEY_PARAMS:
        row[PARAM_PREFIX + key] = params.get(key)
    for key in EXPORT_METRICS:
        row[METRIC_PREFIX + key] = metrics.get(key)
    if all_columns:
        row.update({PARAM_PREFIX + k: v for k, v in params.items()})
        row.update({METRIC_PREFIX + k: v for k, v in metrics.items()})
    return row


def open_experiment(target: Target) -> tuple[Any, str]:
    """``(client, experiment_id)`` of an existing experiment; exporting never creates a store or an experiment."""
    from lem.tracking.store import open_client, sqlite_path

    db = sqlite_path(target.uri)
    if db is not None and not db.is_file():
        raise ValueError(f"no MLflow store at {db} (log a run first, or pass --tracking-uri)")
    try:
        client = open_client(target.uri)
        experiment = client.get_experiment_by_name(target.experiment_name)
    except TrackingUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to open the store
        raise TrackingUnavailable(f"{target.uri}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if experiment is None:
        names = ", ".join(repr(e.name) for e in client.search_experiments()) or "none"
        raise ValueError(f"no experiment {target.experiment_name!r} in {target.uri} (experiments there: {names}); pass --experiment")
    return client, str(experiment.experiment_id)


def rows_from_store(target: Target, filter_string: str = "", *, include_sweeps: bool = False, all_columns: bool = False) -> list[dict[str, Any]]:
    """Every run of the experiment that matches ``filter_string``, newest first."""
    from lem.tracking.mlflow_sink import PARENT_TAG, SWEEP_ID_TAG
    from lem.tracking.sweep import KIND_TAG

    client, experiment_id = open_experiment(target)
    runs = search_all_runs(client, experiment_id, filter_string, order_by=["attributes.start_time DESC"])
    rows = []
    for r in runs:
        tags = r.data.tags
        if tags.get(KIND_TAG) == "sweep" and not include_sweeps:
            continue
        ids = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "start_time": _iso(r.info.start_time),
            "parent_run_id": tags.get(PARENT_TAG, ""),
            "sweep_id": tags.get(SWEEP_ID_TAG, ""),
            "energy_source": tags.get("lem.energy_source", ""),
            "device": tags.get("lem.devices", ""),
            "run_dir": tags.get("lem.run_dir", ""),
        }
        rows.append(_row(ids, r.data.params, r.data.metrics, all_columns))
    return rows


def rows_from_dirs(paths: Sequence[Path], *, all_columns: bool = False) -> list[dict[str, Any]]:
    """The same columns read from result folders (late aggregation where summary.json is missing)."""
    from lem.tracking.metrics import config_params, summary_metrics
    from lem.tracking.mlflow_sink import run_name, run_status
    from lem.tracking.run_folder import read_run_folder, run_key
    from lem.tracking.sweep import read_sweep_file
    from lem.tracking.sync import discover, sweep_id_for

    sweeps, runs = discover(paths)
    found: list[tuple[Path, str]] = [(job, "") for job in runs]
    for sweep in sweeps:
        info = read_sweep_file(sweep.path)
        sweep_id = sweep_id_for(sweep.path, info, [] if info else [run_key(read_run_folder(j)) for j in sweep.jobs])
        found += [(job, sweep_id) for job in sweep.jobs]
    rows = []
    for path, sweep_id in found:
        folder = read_run_folder(path)
        summary = folder.summary or {}
        run = summary.get("run") or {}
        ids = {
            "run_id": "",
            "run_name": run_name(folder.config, folder.summary, folder.job_num),
            "status": run_status(folder),
            "start_time": _iso(int(run["started_unix_s"] * 1000)) if isinstance(run.get("started_unix_s"), (int, float)) else "",
            "parent_run_id": "",
            "sweep_id": sweep_id,
            "energy_source": (summary.get("energy") or {}).get("source") or ("none" if summary else ""),
            "device": ", ".join(run.get("device_names") or []),
            "run_dir": str(folder.path),
        }
        rows.append(_row(ids, config_params(folder.config), summary_metrics(folder.summary, folder.processes), all_columns))
    return rows


def write_csv(rows: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    rows = list(rows)
    columns: list[str] = [*ID_COLUMNS, *(PARAM_PREFIX + k for k in KEY_PARAMS), *(METRIC_PREFIX + k for k in EXPORT_METRICS)]
    seen = set(columns)
    for r in rows:  # --all: extra params and metrics after the fixed ones, in first-seen order
        for k in r:
            if k not in seen:
                seen.add(k)
                columns.append(k)
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return len(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lem export",
        description="Export lem runs as CSV (one row per run): key params and headline metrics.",
        epilog="Examples:\n"
        "  python -m lem export -o runs.csv\n"
        "  python -m lem export --filter \"params.batching.batch_size = '8' and metrics.`headline/j_per_output_token` < 0.5\"\n"
        "  python -m lem export --from-dirs multirun/2026-05-01/12-00-00 -o sweep.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment name (default: lem)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI, else <project>/mlruns)")
    parser.add_argument("--filter", default="", help="MLflow search filter, e.g. \"params.batching.batch_size = '8'\"")
    parser.add_argument("--from-dirs", nargs="+", type=Path, metavar="PATH", help="read result folders instead of MLflow")
    parser.add_argument("--include-sweeps", action="store_true", help="also the sweeps' parent runs")
    parser.add_argument("--all", dest="all_columns", action="store_true", help="every param and metric, not only the key ones")
    parser.add_argument("-o", "--output", default="-", help="CSV file to write (default: stdout)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.from_dirs:
            missing = [str(p) for p in args.from_dirs if not p.exists()]
            if missing:
                print(f"lem.export: error: no such folder: {', '.join(missing)}", file=sys.stderr)
                return 2
            rows = rows_from_dirs(args.from_dirs, all_columns=args.all_columns)
        else:
            target = Target(resolve_tracking_uri(args.tracking_uri), args.experiment)
            rows = rows_from_store(target, args.filter, include_sweeps=args.include_sweeps, all_columns=args.all_columns)
    except TrackingUnavailable as exc:
        print(f"lem.export: error: MLflow tracking store unavailable ({exc})", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"lem.export: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. a malformed --filter: MLflow's message names the problem
        if type(exc).__name__ != "MlflowException":
            raise
        print(f"lem.export: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.output == "-":
        n = write_csv(rows, sys.stdout)
    else:
        with open(args.output, "w", newline="") as fh:
            n = write_csv(rows, fh)
        print(f"lem.export: {n} run(s) → {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
