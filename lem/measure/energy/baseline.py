"""The idle baseline: idle power per channel, measured over one window, and its cache.

``measure`` holds an ``idle_baseline`` window on the meter for the given seconds and turns
each channel's energy into a mean power (its spread from the power samples); every later
window reports ``net_energy_j`` = gross − idle mean × duration.

The cache reuses a recent idle measurement of the same devices on the same host. One JSON file in lem's user cache (``$LEM_CACHE_DIR``, else ``$XDG_CACHE_HOME/lem``, else
``~/.cache/lem``), one entry per host and set of metered devices, replaced atomically. An
entry is reused only when every channel matches (device, component, source, identity) and
it is younger than ``energy.idle_baseline_cache_max_age_s``, in the same state, with the same
driver and enforced power limit (a GPU's idle power depends on all three).

The state is defined, not whatever the previous job left: lem measures idle after the engine is
up and the model resident (``model_loaded``), once the devices' measured power has settled
(``lem.measure.energy.stability``). A first job in a worker and a later job that reuses its engine
then measure the same thing, so net-of-idle figures do not shift between sweep points for reasons
unrelated to the configuration.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lem.files import write_json_atomic
from lem.measure.energy.arithmetic import mean_std
from lem.records import IdleBaselineRecord, IdlePower

if TYPE_CHECKING:
    from lem.measure.energy.meter import EnergyMeter

IDLE_WINDOW = "idle_power"  # the meter's internal window over which idle power is averaged
IDLE_NOISY_CV = 0.10  # idle power std / mean above this is flagged
IDLE_DRIFT_TOLERANCE = 0.05  # idle re-measured after generation: a change above 5 % (and above 2 sigma) is flagged
CACHE_FILE = "idle_baseline.json"
FORMAT = 2  # 2: entries keyed by state, driver and power limit too
MODEL_LOADED = "model_loaded"
IDLE_STATES = {MODEL_LOADED: "engine up, model resident, nothing running, measured power settled"}
CONFIG_KEYS = ("driver_version", "enforced_power_limit_w")  # the device settings an idle figure depends on


def device_config(meter: EnergyMeter) -> dict[str, dict[str, Any]]:
    """Per device, the settings its idle power depends on (from the source's device configuration)."""
    out: dict[str, dict[str, Any]] = {}
    for c in meter.channels:
        config = getattr(c, "config", None) or {}
        picked = {k: config.get(k) for k in CONFIG_KEYS if k in config}
        if picked:
            out[c.device] = picked
    return out


def measure(
    meter: EnergyMeter, seconds: float, max_age_s: float, *, state: str = MODEL_LOADED, settle_max_s: float = 0.0, when: str = "before_warmup"
) -> IdleBaselineRecord:
    """Idle power of every channel of a started ``meter`` over ``seconds``, or a cached one younger than ``max_age_s``.

    First waits up to ``settle_max_s`` for measured power to settle (not for a cached baseline).
    """
    from lem.measure.energy.stability import settle

    config = device_config(meter)
    fp = fingerprint([{**c.describe(), "identity": c.identity, "config": config.get(c.device)} for c in meter.channels], state)
    cached = load(fp, max_age_s, time.time(), meter.cache_dir) if when == "before_warmup" else None
    if cached is not None:
        cached.state, cached.device_config = state, config
        return cached
    settling = settle(meter, settle_max_s)
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
            IdlePower(ch.device, ch.component, r.energy_j / window.duration_s, std, len(readings), r.source, ch.identity or None)  # type: ignore[arg-type]
        )
    record = IdleBaselineRecord(
        duration_s=window.duration_s,
        measured_unix_s=time.time(),
        cached=False,
        power=power,
        start_s=window.start_s,
        end_s=window.end_s,
        state=state,
        when=when,
        settle_s=settling.waited_s,
        settled=settling.settled,
        device_config=config,
    )
    if max_age_s > 0 and when == "before_warmup":
        save(fp, record, meter.cache_dir)
    return record


def settle_warnings(record: IdleBaselineRecord) -> list[str]:
    """A sentence when power never settled before the idle baseline was measured."""
    if record.settled is False:
        return [
            f"power had not settled after {record.settle_s:.3g} s before the idle baseline ({record.when}): "
            "the baseline may include the tail of the previous activity (raise energy.idle_settle_max_s)"
        ]
    return []


def drift(before: Sequence[IdlePower], after: Sequence[IdlePower]) -> list[dict[str, Any]]:
    """Per device, idle power re-measured after generation against the baseline: change, relative change, in sigma."""
    out = []
    base = {(p.device, p.component): p for p in before}
    for p in after:
        b = base.get((p.device, p.component))
        if b is None:
            continue
        errors = [x.std_error_w for x in (b, p) if x.std_error_w is not None]
        sigma = sum(e * e for e in errors) ** 0.5 if len(errors) == 2 else None
        change = p.mean_power_w - b.mean_power_w
        out.append(
            {
                "device": p.device,
                "component": p.component,
                "before_w": b.mean_power_w,
                "after_w": p.mean_power_w,
                "change_w": change,
                "relative_change": change / b.mean_power_w if b.mean_power_w else None,
                "change_sigma": abs(change) / sigma if sigma else None,
            }
        )
    return out


def drift_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """A sentence for each device whose idle power moved by more than IDLE_DRIFT_TOLERANCE and 2 sigma."""
    return [
        f"idle power of {d['device']} drifted from {d['before_w']:.4g} W before warmup to {d['after_w']:.4g} W after "
        f"generation ({d['relative_change']:+.1%}): net-of-idle figures carry that uncertainty"
        for d in rows
        if d["relative_change"] is not None
        and abs(d["relative_change"]) > IDLE_DRIFT_TOLERANCE
        and (d["change_sigma"] is None or d["change_sigma"] > 2.0)
    ]


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


def fingerprint(channels: list[dict[str, Any]], state: str = MODEL_LOADED) -> str:
    """Host, state and metered channels (with driver and power limit): a baseline of other hardware, another
    source, another state or another device setting is never reused."""
    parts = sorted(
        f"{c['device']}|{c['component']}|{c['source']}|{c.get('identity', '')}|{json.dumps(c.get('config'), sort_keys=True)}"
        for c in channels
    )
    return json.dumps([platform.node(), state, parts])


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
