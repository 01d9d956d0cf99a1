"""The idle baseline: idle power per channel, measured over one window, and its cache.

``measure`` holds an ``idle_baseline`` window on the meter for the given seconds and turns
each channel's energy into a mean power (its spread from the power samples); every later
window reports ``net_energy_j`` = gross − idle mean × duration.

The cache reuses a recent idle measurement of the same devices on the same host. One JSON file in lem's user cache (``$LEM_CACHE_DIR``, else ``$XDG_CACHE_HOME/lem``, else
``~/.cache/lem``), one entry per host and set of metered devices, replaced atomically. An
entry is reused only when every channel matches (device, component, source, identity) and
it is younger than ``energy.idle_baseline_cache_max_age_s``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lem.files import write_json_atomic
from lem.measure.energy.arithmetic import mean_std
from lem.records import IdleBaselineRecord, IdlePower

if TYPE_CHECKING:
    from lem.measure.energy.meter import EnergyMeter

IDLE_WINDOW = "idle_baseline"
IDLE_NOISY_CV = 0.10  # idle power std / mean above this is flagged
CACHE_FILE = "idle_baseline.json"
FORMAT = 1


def measure(meter: EnergyMeter, seconds: float, max_age_s: float) -> IdleBaselineRecord:
    """Idle power of every channel of a started ``meter`` over ``seconds``, or a cached one younger than ``max_age_s``."""
    fp = fingerprint([{**c.describe(), "identity": c.identity} for c in meter.channels])
    cached = load(fp, max_age_s, time.time(), meter.cache_dir)
    if cached is not None:
        return cached
    begin_t = meter.begin_window(IDLE_WINDOW)
    meter.pause(seconds, since=begin_t)
    window = meter.end_window(IDLE_WINDOW, synchronize=lambda: None)
    power = []
    for ch, r in zip(meter.channels, window.readings, strict=True):
        if r.energy_j is None or window.duration_s <= 0:
            continue
        readings = [row.power_w for row in meter.sampler.rows(ch.key, begin_t, begin_t + window.duration_s) if row.power_w is not None]
        _, std = mean_std(readings)
        power.append(
            IdlePower(ch.device, ch.component, r.energy_j / window.duration_s, std, len(readings), r.source)  # type: ignore[arg-type]
        )
    record = IdleBaselineRecord(
        duration_s=window.duration_s,
        measured_unix_s=time.time(),
        cached=False,
        power=power,
        start_s=window.start_s,
        end_s=window.end_s,
    )
    if max_age_s > 0:
        save(fp, record, meter.cache_dir)
    return record


def noisy_warnings(record: IdleBaselineRecord) -> list[str]:
    """A sentence for each channel whose idle power spread is above ``IDLE_NOISY_CV`` of its mean."""
    return [
        f"idle baseline of {p.device} is noisy: {p.mean_power_w:.3g} ± {p.std_power_w:.2g} W "
        f"(n={p.n_samples}); net-of-idle figures inherit that spread"
        for p in record.power
        if p.std_power_w is not None and p.mean_power_w > 0 and p.std_power_w / p.mean_power_w > IDLE_NOISY_CV
    ]


def cache_path(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is None:
        from lem.files import cache_root

        cache_dir = cache_root()
    return Path(cache_dir) / CACHE_FILE


def fingerprint(channels: list[dict[str, Any]]) -> str:
    """Host + metered channels: a baseline of other hardware (or another source) is never reused."""
    parts = sorted(f"{c['device']}|{c['component']}|{c['source']}|{c.get('identity', '')}" for c in channels)
    return json.dumps([platform.node(), parts])


def load(fp: str, max_age_s: float, now_unix_s: float, cache_dir: str | Path | None = None) -> IdleBaselineRecord | None:
    if max_age_s <= 0:
        return None
    try:
        data = json.loads(cache_path(cache_dir).read_text())
        entry = data["entries"][fp]
        if data.get("format") != FORMAT:
            return None
        age = now_unix_s - float(entry["measured_unix_s"])
        if not 0 <= age <= max_age_s:
            return None
        return IdleBaselineRecord(
            duration_s=float(entry["duration_s"]),
            measured_unix_s=float(entry["measured_unix_s"]),
            cached=True,
            power=[IdlePower(**p) for p in entry["power"]],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no cache, another format, a torn file: measure instead


def save(fp: str, record: IdleBaselineRecord, cache_dir: str | Path | None = None) -> None:
    path = cache_path(cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError
        except (OSError, ValueError):
            data = {"format": FORMAT, "entries": {}}
        data["entries"][fp] = {
            "duration_s": record.duration_s,
            "measured_unix_s": record.measured_unix_s,
            "power": [vars(p) for p in record.power],
        }
        write_json_atomic(path, data, indent=1)
    except OSError:
        pass  # a read-only cache costs a re-measurement next time, nothing else
