"""Late aggregation: raw per-process records → one summary dict (``lem.summary/1``).

Pure: the summary depends only on the records (and the config, which it copies), so
``lem summarize RUN_DIR`` recomputes exactly what the run wrote. Figures nothing
measured are ``None`` — never 0. Measured and estimated energy are never added together.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from lem.errors import LemError
from lem.records import PHASE_ORDER, RAW_SCHEMA_VERSION, SUMMARY_SCHEMA_VERSION
from lem.results.attributed import attributed_sections
from lem.results.cycles import cycles_section
from lem.results.energy import energy_section, utilisation_section
from lem.results.latency import distribution, request_latencies
from lem.results.phase_energy import energy_of
from lem.results.reader import RawProcessRecords, clock_offsets
from lem.results.steady_state import power_series
from lem.results.token_ids import greedy_from_config, token_id_checks, token_id_warnings
from lem.results.trust import trust_warnings
from lem.results.warmup import warmup_section
from lem.results.workload import batching_section, traffic_section

HOST_SHARED_COMPONENTS = frozenset({"cpu", "dram", "system"})  # one physical meter per host
MIN_WINDOW_S = 5.0  # below this the energy counters' resolution dominates the figure
RECOMMENDED_WINDOW_S = 20.0


def summarize(processes: list[RawProcessRecords], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Aggregate every process's raw records of one run into the summary dict."""
    return summarize_with_request_energy(processes, config)[0]


def summarize_with_request_energy(
    processes: list[RawProcessRecords], config: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary dict and, from the same split, each request's energy (``request_energy.jsonl``)."""
    if not processes:
        raise LemError("no process records to summarize")
    procs = sorted(processes, key=lambda p: p.process_index)
    warnings: list[str] = []
    requests = [r for p in procs for r in p.requests]
    series = power_series(procs)  # every device's timeline, read once for every section that needs it

    run = _run_section(procs, requests, config, warnings)
    tokens = _tokens_section(requests)
    window_s = _generation_window_s(procs, warnings)
    throughput = _throughput_section(len(requests), tokens, window_s)
    latency = {metric: distribution(values) for metric, values in request_latencies(requests).items()}
    phases, phases_per_process = _phases_section(procs, warnings)
    energy = energy_section(procs, phases, requests, tokens, clock_offsets(procs), warnings, series)
    flops = _flops_section(procs, tokens, window_s, warnings)
    memory = _memory_section(procs)
    batching = batching_section(procs)
    traffic = traffic_section(requests, config, procs)
    cycles = cycles_section(procs, warnings)
    warmup = warmup_section(procs, warnings)
    beyond, request_energy = attributed_sections(procs, series, config, requests, energy, flops, tokens, window_s, warnings)
    tokens["token_ids"] = token_id_checks(requests, greedy=greedy_from_config(config))
    warnings.extend(token_id_warnings(tokens["token_ids"]))

    run["process_overlap_fraction"] = _process_overlap(procs, warnings)
    if window_s is not None and window_s < MIN_WINDOW_S:
        warnings.append(
            f"generation window {window_s:.3g} s is shorter than {MIN_WINDOW_S:g} s; "
            f"aim for >= {RECOMMENDED_WINDOW_S:g} s (more prompts or more output tokens)"
        )
    if not requests:
        warnings.append("no request records: nothing was generated in the measured window")
    if tokens["truncated_prompts"]:
        n_prompts = len({r["request_id"] for r in requests})
        warnings.append(f"{tokens['truncated_prompts']} of {n_prompts} prompts were cut to dataset.max_input_tokens")
    warnings.extend(trust_warnings(procs, config))  # a busy host, a batch size the prompts never filled

    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "raw_schema_version": RAW_SCHEMA_VERSION,
        "status": run.pop("status"),  # headline: "completed" or "incomplete"
        "n_requests": len(requests),
        "run": run,
        "tokens": tokens,
        "throughput": throughput,
        "latency": latency,
        "phases": phases,
        "phases_per_process": phases_per_process,
        "energy": energy,
        "warmup": warmup,
        "utilisation": utilisation_section(procs, series),
        "flops": flops,
        "memory": memory,
        "batching": batching,
        "traffic": traffic,
        "cycles": cycles,
        **beyond,  # attribution (per request, prefill/decode, boundaries), goodput, floor, gpu_control
        "warnings": warnings,
        "config": copy.deepcopy(dict(config)) if config is not None else None,
    }
    return summary, request_energy


# --- run and tokens ---------------------------------------------------------------------


def _run_section(
    procs: list[RawProcessRecords], requests: list[dict[str, Any]], config: Mapping[str, Any] | None, warnings: list[str]
) -> dict[str, Any]:
    h0 = procs[0].header
    world_size = max(int(p.header.get("world_size", 1)) for p in procs)
    n_completed = sum(1 for p in procs if p.end is not None and p.end.get("status") == "completed")
    torn = [p.path.name for p in procs if p.torn_last_line]
    status = "completed" if n_completed == len(procs) == world_size else "incomplete"
    expected = _expected_requests(config)

    if status == "incomplete":
        warnings.append(
            f"run incomplete: {len(requests)} requests recorded; {n_completed} of {world_size} "
            "processes reached their end record (figures cover what was recorded)"
        )
    if torn:
        warnings.append(f"torn last line dropped in {', '.join(torn)} (process killed mid-write)")
    if status == "completed" and expected is not None and len(requests) != expected:
        warnings.append(f"{len(requests)} requests recorded but the config asked for {expected} (dataset.n_prompts x cycles)")

    return {
        "status": status,
        "n_processes": len(procs),
        "n_processes_completed": n_completed,
        "world_size": world_size,
        "n_requests_expected": expected,
        "torn_last_lines": len(torn),
        "started_unix_s": min(p.t0_unix_s for p in procs),
        "model": h0.get("model"),
        "engine": h0.get("engine"),
        "engine_version": h0.get("engine_version"),
        "dtype": h0.get("dtype"),
        "device_type": h0.get("device_type"),
        "device_names": sorted({d for p in procs for d in p.header.get("device_names") or []}),
        "hostnames": sorted({str(p.header.get("hostname")) for p in procs}),
        "num_threads": h0.get("num_threads"),
        "lem_version": h0.get("lem_version"),
    }


def _expected_requests(config: Mapping[str, Any] | None) -> int | None:
    dataset = config.get("dataset") if isinstance(config, Mapping) else None
    n = dataset.get("n_prompts") if isinstance(dataset, Mapping) else None
    cycles = config.get("cycles", 1) if isinstance(config, Mapping) else 1
    if not isinstance(n, int) or isinstance(n, bool):
        return None
    return n * cycles if isinstance(cycles, int) and cycles >= 1 else n


def _tokens_section(requests: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(requests)
    n_in = sum(int(r["input_tokens"]) for r in requests)
    n_out = sum(int(r["output_tokens"]) for r in requests)
    truncated = {r["request_id"] for r in requests if r.get("truncated")}
    return {
        "truncated_prompts": len(truncated),  # distinct prompts cut to dataset.max_input_tokens
        "input_tokens": n_in,
        "output_tokens": n_out,
        "total_tokens": n_in + n_out,
        "mean_input_tokens": n_in / n if n else None,
        "mean_output_tokens": n_out / n if n else None,
        "finish_reasons": dict(sorted(Counter(str(r.get("finish_reason")) for r in requests).items())),
    }


# --- time: the generation window, throughput --------------------------------------------


def _generation_window_s(procs: list[RawProcessRecords], warnings: list[str]) -> float | None:
    """Earliest generation start → latest generation end over all processes, on wall-clock time.

    Each process's times are relative to its own t0; ``t0_unix_s + t`` puts them on one clock
    (computed as offsets from the earliest t0 to keep precision).
    A process killed during generation has no generation phase record: its requests bound it.
    """
    off = clock_offsets(procs)
    spans: dict[int, list[tuple[float, float]]] = defaultdict(list)  # per measured cycle
    from_requests = []
    for p in procs:
        gen = [ph for ph in p.phases if ph.get("name") == "generation"]
        if gen:
            for ph in gen:
                spans[int(ph.get("cycle") or 0)].append((off[id(p)] + float(ph["start_s"]), off[id(p)] + float(ph["end_s"])))
        elif p.requests:
            for cycle in sorted({int(r.get("cycle") or 0) for r in p.requests}):
                mine = [r for r in p.requests if int(r.get("cycle") or 0) == cycle]
                spans[cycle].append(
                    (off[id(p)] + min(float(r["start_s"]) for r in mine), off[id(p)] + max(float(r["end_s"]) for r in mine))
                )
            from_requests.append(p.process_index)
    if not spans:
        return None
    if from_requests:
        warnings.append(
            "generation window of process(es) "
            f"{', '.join(map(str, from_requests))} taken from request records (no generation phase record)"
        )
    # Each cycle's window spans all processes (wall clock); cycles add up, the pauses between them do not count.
    return sum(max(e for _, e in s) - min(b for b, _ in s) for s in spans.values())


MIN_PROCESS_OVERLAP = 0.9  # processes of one run must generate at the same time for a span-based throughput


def _process_overlap(procs: list[RawProcessRecords], warnings: list[str]) -> float | None:
    """Share of the generation span during which every process was generating (None with one process)."""
    off = clock_offsets(procs)
    windows = []
    for p in procs:
        gen = [ph for ph in p.phases if ph.get("name") == "generation"]
        if gen:
            windows.append((off[id(p)] + min(float(g["start_s"]) for g in gen), off[id(p)] + max(float(g["end_s"]) for g in gen)))
    if len(windows) < 2:
        return None
    span = max(e for _, e in windows) - min(b for b, _ in windows)
    common = min(e for _, e in windows) - max(b for b, _ in windows)
    fraction = max(0.0, common) / span if span > 0 else 1.0
    if fraction < MIN_PROCESS_OVERLAP:
        warnings.append(
            f"the {len(windows)} processes generated together for only {fraction:.0%} of the span: throughput over the "
            "span and summed energy describe processes that did not run concurrently"
        )
    return fraction


def _throughput_section(n_requests: int, tokens: dict[str, Any], window_s: float | None) -> dict[str, Any]:
    def rate(count: int) -> float | None:
        return count / window_s if window_s and window_s > 0 else None

    return {
        "generation_wall_s": window_s,
        "output_tokens_per_s": rate(tokens["output_tokens"]),
        "total_tokens_per_s": rate(tokens["total_tokens"]),
        "requests_per_s": rate(n_requests),
    }


# --- phases and energy -------------------------------------------------------------------


def _phase_names(procs: Iterable[RawProcessRecords]) -> list[str]:
    seen = [ph.get("name") for p in procs for ph in p.phases]
    extra = [n for n in dict.fromkeys(seen) if n not in PHASE_ORDER]  # e.g. an idle baseline
    return [n for n in PHASE_ORDER if n in seen] + extra


def _phases_section(
    procs: list[RawProcessRecords], warnings: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per phase: wall time (span over processes on wall-clock time) and energy summed over processes."""
    names = _phase_names(procs)
    off = clock_offsets(procs)
    flat: dict[str, Any] = {}
    for name in names:
        records = [(p, ph) for p in procs for ph in p.phases if ph.get("name") == name]
        by_cycle: dict[Any, list[tuple[float, float]]] = defaultdict(list)
        for p, ph in records:
            by_cycle[ph.get("cycle")].append((off[id(p)] + float(ph["start_s"]), off[id(p)] + float(ph["end_s"])))
        readings = [(p, r) for p, ph in records for r in ph.get("energy") or []]
        _warn_shared_meters(name, readings, warnings)
        flat[name] = {
            # Span over processes of each cycle's window, summed over cycles.
            "wall_s": sum(max(e for _, e in spans) - min(b for b, _ in spans) for spans in by_cycle.values()),
            "n_processes": len({p.process_index for p, _ in records}),
            **energy_of([r for _, r in readings], warnings, where=name),
        }
    per_process = []
    for p in procs:
        phases = {}
        for name in names:
            mine = [ph for ph in p.phases if ph.get("name") == name]
            if not mine:
                continue
            e = energy_of([r for ph in mine for r in ph.get("energy") or []], [], where=name)
            phases[name] = {
                "wall_s": sum(float(ph["end_s"]) - float(ph["start_s"]) for ph in mine),
                "energy_j": e["energy_j"],
                "energy_source": e["energy_source"],
            }
        per_process.append(
            {"process_index": p.process_index, "hostname": p.header.get("hostname"), "complete": p.complete, "phases": phases}
        )
    return flat, per_process


def _warn_shared_meters(phase: str, readings: list[tuple[RawProcessRecords, dict[str, Any]]], warnings: list[str]) -> None:
    # RAPL and whole-system meters are per host: two processes on one host read the same one.
    by_meter: dict[tuple[str, str], set[int]] = defaultdict(set)
    for p, r in readings:
        if r.get("component") in HOST_SHARED_COMPONENTS and r.get("energy_j") is not None:
            by_meter[(str(p.header.get("hostname")), str(r.get("device")))].add(p.process_index)
    for (host, device), indices in sorted(by_meter.items()):
        if len(indices) > 1:
            warnings.append(
                f"{phase}: {device} on {host} reported by processes {sorted(indices)}; "
                "summing them counts that meter more than once"
            )


# --- flops, memory, batching -------------------------------------------------------------


def _flops_section(
    procs: list[RawProcessRecords], tokens: dict[str, Any], window_s: float | None, warnings: list[str]
) -> dict[str, Any]:
    """Executed and useful FLOPs over processes, per token, achieved FLOP/s, and MFU/HFU against the
    summed peak of every GPU the run computes on."""
    from lem.measure.flops import flops_summary

    def n_devices(p: RawProcessRecords, f: Mapping[str, Any]) -> int:
        # Records from before n_devices existed: the CUDA devices the process's header lists.
        return int(f["n_devices"]) if f.get("n_devices") is not None else len(p.header.get("cuda_device_indices") or []) or 1

    def process_peak(p: RawProcessRecords, f: Mapping[str, Any]) -> float | None:
        peak = f.get("peak_flops_per_s")
        # Each process's peak covers every GPU its engine uses; older records stored one GPU's.
        return peak if peak is None or "n_devices" in f else float(peak) * n_devices(p, f)

    h0 = procs[0].header
    on_gpu = h0.get("device_type") == "cuda"
    by_index = {p.process_index: p for p in procs}
    values = [(p.process_index, p.flops[-1]) for p in procs if p.flops]
    counted = [(i, f) for i, f in values if f.get("total_flops") is not None]
    devices = sum(n_devices(by_index[i], f) for i, f in values) if on_gpu and values else None
    combined: dict[str, Any] = {"total_flops": None, "source": None, "notes": []}
    if counted and len(counted) == len(procs):
        keys = ("total_flops", "useful_flops", "prefill_flops", "decode_flops", "useful_prefill_flops", "useful_decode_flops")
        combined = {
            key: (sum(float(f[key]) for _, f in counted) if all(f.get(key) is not None for _, f in counted) else None)
            for key in keys
        }
        combined["source"] = "+".join(sorted({str(f["source"]) for _, f in counted}))
        peaks = [process_peak(by_index[i], f) for i, f in counted]
        combined["peak_flops_per_s"] = sum(x for x in peaks if x is not None) if all(x is not None for x in peaks) else None
        each = {f.get("peak_flops_per_s_per_device", f.get("peak_flops_per_s")) for _, f in counted}
        combined["peak_flops_per_s_per_device"] = next(iter(each)) if len(each) == 1 else None
        combined["n_devices"] = devices
        combined["notes"] = sorted({n for _, f in counted for n in f.get("notes") or []})
    elif counted:
        missing = sorted({p.process_index for p in procs} - {i for i, _ in counted})
        warnings.append(f"FLOPs missing for process(es) {missing}: total FLOPs left null")
    elif values:
        combined["notes"] = sorted({n for _, f in values for n in f.get("notes") or []})
    out = flops_summary(
        combined, tokens["output_tokens"], window_s, input_tokens=tokens["input_tokens"], device_type=h0.get("device_type"),
        device_name=(h0.get("device_names") or [None])[0], dtype=h0.get("dtype"), n_devices=devices,
    )
    out["strategy"] = next((f.get("strategy") for _, f in values if f.get("strategy")), None)
    out["calflops_vs_analytical"] = next((f.get("calflops_vs_analytical") for _, f in values if f.get("calflops_vs_analytical") is not None), None)
    return out


def _memory_section(procs: list[RawProcessRecords]) -> dict[str, Any]:
    per_process = []
    for p in procs:
        m = p.memory[-1] if p.memory else {}  # peaks only grow: the last record holds them
        per_process.append(
            {
                "process_index": p.process_index,
                "peak_rss_bytes": m.get("peak_rss_bytes"),
                "cuda_peak_allocated_bytes": m.get("cuda_peak_allocated_bytes"),
                "cuda_peak_reserved_bytes": m.get("cuda_peak_reserved_bytes"),
                "source": m.get("source"),
            }
        )

    def peak(key: str) -> int | None:
        vals = []
        for m in per_process:
            v = m[key]
            vals += [x for x in v if x is not None] if isinstance(v, list) else ([v] if v is not None else [])
        return max(vals) if vals else None

    return {
        "peak_rss_bytes": peak("peak_rss_bytes"),
        "cuda_peak_allocated_bytes": peak("cuda_peak_allocated_bytes"),
        "cuda_peak_reserved_bytes": peak("cuda_peak_reserved_bytes"),
        "per_process": per_process,
    }
