"""The GPU settings part of the late aggregation: what ``gpu.*`` applied to each GPU, and whether it took hold.

A power limit that generation never reached did not change what was measured: the cap "bound"
when generation power came within ``CAP_REACHED_FRACTION`` of the enforced limit at some power
sample, or NVML reported the ``sw_power_cap`` clock-event reason during generation. A locked clock
is compared with the SM clock sampled during generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import fmean
from typing import Any

from lem.results.reader import RawProcessRecords

CAP_REACHED_FRACTION = 0.97  # generation power within 3 % of the enforced limit: the cap was reached
SW_POWER_CAP_BIT = 0x4  # NVML clock-event reason sw_power_cap (lem.measure.energy.nvml.THROTTLE_REASONS)
CLOCK_TOLERANCE = 0.05  # mean generation SM clock this far from the locked clock is worth a warning


def gpu_control_section(
    procs: list[RawProcessRecords], series: Mapping[tuple[int, str, str], dict[str, Any]], warnings: list[str]
) -> dict[str, Any] | None:
    """Per GPU: what was requested, in force before, enforced, read back and restored, with generation's power
    and clocks beside it; None when the run set no GPU setting (no ``gpu_control`` record). Appends a warning
    where the cap never bound, a locked clock did not hold, or a GPU was left unrestored."""
    found = [(p, p.others("gpu_control")[-1]) for p in procs if p.others("gpu_control")]  # the last record: after restore
    if not found:
        return None
    devices = [_device_row(p, d, series) for p, rec in found for d in rec.get("devices") or []]
    first = found[0][1]
    power_limit_w, clock_mhz = first.get("power_limit_w"), first.get("locked_sm_clock_mhz")
    for row in devices:
        warnings.extend(_row_warnings(row))
    bound = [r["cap_bound"] for r in devices if r["cap_bound"] is not None]
    peaks = [r["max_generation_power_w"] for r in devices if r["max_generation_power_w"] is not None]
    clocks = [r["mean_generation_sm_clock_mhz"] for r in devices if r["mean_generation_sm_clock_mhz"] is not None]
    return {
        "power_limit_w": power_limit_w,
        "locked_sm_clock_mhz": clock_mhz,
        "restored": all(bool(r["restored"]) for r in devices),
        "cap_bound": None if power_limit_w is None or not bound else any(bound),
        "max_generation_power_w": max(peaks) if peaks else None,
        "mean_generation_sm_clock_mhz": fmean(clocks) if clocks else None,
        "devices": devices,
        "notes": [n for _, rec in found for n in rec.get("notes") or []],
    }


def _device_row(p: RawProcessRecords, d: dict[str, Any], series: Mapping[tuple[int, str, str], dict[str, Any]]) -> dict[str, Any]:
    device = str(d.get("device"))
    windows = [(float(ph["start_s"]), float(ph["end_s"])) for ph in p.phases if ph.get("name") == "generation"]
    s = series.get((id(p), device, "gpu"))
    rows = [r for r in (s["rows"] if s else []) if any(a <= r["t_s"] <= b for a, b in windows)]
    powers = [float(r["power_w"]) for r in rows if r["power_w"] is not None]
    clocks = [float(r["sm_clock_mhz"]) for r in rows if r["sm_clock_mhz"] is not None]
    cap_seen = _sw_power_cap_seen(p, device, rows)
    limit_w = d.get("enforced_power_limit_w") or d.get("power_limit_w")
    cap_bound: bool | None = None
    if d.get("power_limit_w") is not None:
        if cap_seen:
            cap_bound = True
        elif powers and limit_w:
            cap_bound = max(powers) >= CAP_REACHED_FRACTION * float(limit_w)
    return {
        "process_index": p.process_index,
        "device": device,
        "uuid": d.get("uuid"),
        "name": d.get("name"),
        "power_limit_w": d.get("power_limit_w"),
        "power_limit_before_w": d.get("power_limit_before_w"),
        "enforced_power_limit_w": d.get("enforced_power_limit_w"),
        "locked_sm_clock_mhz": d.get("locked_sm_clock_mhz"),
        "sm_clock_mhz_after": d.get("sm_clock_mhz_after"),
        "restored": bool(d.get("restored")),
        "run_completed": p.complete,
        "max_generation_power_w": max(powers) if powers else None,
        "mean_generation_power_w": fmean(powers) if powers else None,
        "sw_power_cap_seen": cap_seen,
        "cap_bound": cap_bound,
        "mean_generation_sm_clock_mhz": fmean(clocks) if clocks else None,
        "notes": list(d.get("notes") or []),
    }


def _sw_power_cap_seen(p: RawProcessRecords, device: str, rows: list[dict[str, Any]]) -> bool | None:
    """True: NVML said sw_power_cap during generation (a sampled mask or the phase's reasons); None: it said nothing."""
    masks = [int(r["throttle_reasons"]) for r in rows if r.get("throttle_reasons") is not None]
    reasons = [
        reading.get("throttle_reasons")
        for ph in p.phases
        if ph.get("name") == "generation"
        for reading in ph.get("energy") or []
        if reading.get("device") == device and reading.get("throttle_reasons") is not None
    ]
    if not masks and not reasons:
        return None
    return any(m & SW_POWER_CAP_BIT for m in masks) or any("sw_power_cap" in r for r in reasons)


def _row_warnings(row: dict[str, Any]) -> list[str]:
    out = []
    device, limit_w, clock_mhz = row["device"], row["power_limit_w"], row["locked_sm_clock_mhz"]
    if row["cap_bound"] is False:
        out.append(
            f"gpu.power_limit_w={limit_w:g}: the cap never bound (generation power peaked at {row['max_generation_power_w']:.0f} W "
            f"on {device}, enforced limit {row['enforced_power_limit_w'] or limit_w:g} W): this run measures the GPU uncapped"
        )
    mean_mhz = row["mean_generation_sm_clock_mhz"]
    if clock_mhz is not None and mean_mhz is not None and abs(mean_mhz - clock_mhz) > CLOCK_TOLERANCE * clock_mhz:
        why = "a power or thermal limit lowered it" if mean_mhz < clock_mhz else "the lock did not hold"
        out.append(f"gpu.locked_sm_clock_mhz={clock_mhz}: generation ran at {mean_mhz:.0f} MHz on average on {device} ({why})")
    if not row["restored"]:
        key = f"gpu.power_limit_w={limit_w:g}" if limit_w is not None else f"gpu.locked_sm_clock_mhz={clock_mhz}"
        before = row["power_limit_before_w"]
        fix = " and ".join(
            ([f"`sudo nvidia-smi -i {row['uuid']} -pl {before:g}`"] if limit_w is not None and before is not None else [])
            + ([f"`sudo nvidia-smi -i {row['uuid']} -rgc`"] if clock_mhz is not None else [])
        )
        when = "this run ended" if row["run_completed"] else "this run was cut short"
        out.append(
            f"{key}: {device} was not restored when {when}; the next lem run on that GPU restores it"
            + (f", or run {fix}" if fix else "")
        )
    return out
