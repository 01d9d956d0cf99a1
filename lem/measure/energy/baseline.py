"""The idle-baseline cache: reuse a recent idle measurement of the same devices on the same host.

One JSON file in lem's user cache (``$LEM_CACHE_DIR``, else ``$XDG_CACHE_HOME/lem``, else
``~/.cache/lem``), one entry per host and set of metered devices, replaced atomically. An
entry is reused only when every channel matches (device, component, source, identity) and
it is younger than ``energy.idle_baseline_cache_max_age_s``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from lem.files import write_json_atomic
from lem.records import IdleBaselineRecord, IdlePower

CACHE_FILE = "idle_baseline.json"
FORMAT = 1


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
