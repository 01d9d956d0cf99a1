"""Warnings about whether a run measured what its config says: a busy host, a batch size never reached.

Both read only the raw records (and the config the summary is given), like the rest of late
aggregation. Truncated prompts and net energy at or below idle are warned about where they are
computed (``lem.results.aggregate``, ``lem.results.energy``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lem.results.reader import RawProcessRecords

# Other work may use this many cores beyond those lem leaves free before the host counts as busy:
# half a core absorbs the OS, the shell and lem's own short-lived helpers.
BUSY_MARGIN_CORES = 0.5
CAPPED_STRATEGIES = ("static", "sorted_static")


def trust_warnings(procs: list[RawProcessRecords], config: Mapping[str, Any] | None) -> list[str]:
    """Every warning of this module for one run's process records."""
    return [*busy_host_warnings(procs), *batch_cap_warnings(procs, config)]


def busy_host_warnings(procs: list[RawProcessRecords]) -> list[str]:
    """Other processes kept more cores busy during generation than lem left free (per host).

    Other work = CPU cores busy on the whole host minus those busy in lem's processes (the end
    record's ``host_busy_cores`` and ``lem_busy_cores``); lem leaves free the host's cores minus
    the threads its engine uses (``num_threads``; all cores when unknown, e.g. GPU engines).
    """
    warnings = []
    hosts = sorted({str(p.header.get("hostname")) for p in procs})
    for host in hosts:
        on_host = [p for p in procs if str(p.header.get("hostname")) == host and p.end is not None]
        ends = [p.end for p in on_host if p.end and p.end.get("host_busy_cores") is not None and p.end.get("lem_busy_cores") is not None]
        if not ends or len(ends) != len(on_host):
            continue  # records from before these fields, or a platform without the figures
        cpus = max(int(e.get("cpu_count") or 0) for e in ends)
        if cpus <= 0:
            continue
        host_busy = max(float(e["host_busy_cores"]) for e in ends)  # one host, overlapping windows: the same figure, read per rank
        lem_busy = sum(float(e["lem_busy_cores"]) for e in ends)
        threads_each = [p.header.get("num_threads") for p in on_host]
        threads = cpus if any(t is None for t in threads_each) else sum(int(t) for t in threads_each)
        other = host_busy - lem_busy
        if other <= max(cpus - threads, 0) + BUSY_MARGIN_CORES:
            continue
        loads = [e.get("load_avg_1m_start") for e in ends if e.get("load_avg_1m_start") is not None]
        load = f" (load average {max(loads):.1f})" if loads else ""
        where = f" on {host}" if len(hosts) > 1 else ""
        warnings.append(
            f"host busy{where}: other processes kept {other:.1f} of {cpus} CPU cores busy during generation{load} "
            f"while lem used {threads} thread{'s' if threads != 1 else ''}; timings and energy include other work"
        )
    return warnings


def batch_cap_warnings(procs: list[RawProcessRecords], config: Mapping[str, Any] | None) -> list[str]:
    """A static batch size larger than the prompts a process serves per cycle was never measured."""
    batching = _effective_batching(procs, config)
    strategy, size = batching.get("strategy"), batching.get("batch_size")
    if strategy not in CAPPED_STRATEGIES or not isinstance(size, int) or isinstance(size, bool):
        return []
    per_process = [_prompts_per_cycle(p) for p in procs if p.requests]
    if not per_process:
        return []
    n = max(per_process)
    if size <= n:
        return []
    each = " per process" if len(per_process) > 1 else ""
    return [
        f"batching.batch_size={size} but only {n} prompts{each}: batches held at most {n}; "
        f"the run measured batch size {n}, not {size}"
    ]


def _effective_batching(procs: list[RawProcessRecords], config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The batching the engine ran with (``auto`` resolved, in the header), else the config's."""
    recorded = (procs[0].header.get("engine_settings") or {}).get("batching") if procs else None
    if isinstance(recorded, Mapping) and recorded.get("strategy"):
        return recorded
    configured = config.get("batching") if isinstance(config, Mapping) else None
    return configured if isinstance(configured, Mapping) else {}


def _prompts_per_cycle(p: RawProcessRecords) -> int:
    cycles = [r.get("cycle") or 0 for r in p.requests]
    first = min(cycles)
    return sum(1 for c in cycles if c == first)
