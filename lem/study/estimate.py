"""How long a planned job will take, from earlier runs of the same settings on this machine.

Every result folder under the project's ``outputs/`` and ``multirun/`` holds the config it ran
(``resolved_config.yaml``) and its summary: its settings key (``lem.study.identity``) finds the
runs of a point, and their phases give the time: setup (engine init, model load, idle baseline,
warmup) once per job, generation per cycle. The estimate is the median over matching runs of
setup + cycles x generation per cycle. Process start, imports and FLOP counting are not in any
phase, so it is a lower bound.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

GENERATION_PHASES = ("generation", "cooldown")
MAX_FOLDERS = 5000  # the newest folders scanned (a long-lived project keeps many)


class Estimator:
    """Seconds per job by settings key, read lazily from the result folders under ``roots``."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self._runs: dict[str, list[tuple[float, float]]] | None = None  # key -> [(setup_s, per_cycle_s)]

    def __call__(self, settings_key: str, cycles: int) -> float | None:
        runs = self.runs().get(settings_key)
        if not runs:
            return None
        return statistics.median(setup + cycles * per_cycle for setup, per_cycle in runs)

    def n_runs(self, settings_key: str) -> int:
        return len(self.runs().get(settings_key) or [])

    def runs(self) -> dict[str, list[tuple[float, float]]]:
        if self._runs is None:
            self._runs = defaultdict(list)
            summaries = [p for root in self.roots if root.is_dir() for p in root.rglob("summary.json")]
            summaries.sort(key=_mtime, reverse=True)
            for path in summaries[:MAX_FOLDERS]:
                found = _timing(path.parent)
                if found is not None:
                    self._runs[found[0]].append(found[1:])
        return self._runs


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _timing(run_dir: Path) -> tuple[str, float, float] | None:
    """(settings key, setup seconds, generation seconds per cycle) of a completed run; None when unreadable."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary.get("status") != "completed":
            return None
        phases = summary.get("phases") or {}
        setup = sum(float(p.get("wall_s") or 0.0) for name, p in phases.items() if name not in GENERATION_PHASES and isinstance(p, dict))
        generation = sum(float(p.get("wall_s") or 0.0) for name, p in phases.items() if name in GENERATION_PHASES and isinstance(p, dict))
        cycles = int((summary.get("cycles") or {}).get("n_cycles") or 1)
        key = _settings_key(run_dir)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if key is None or generation <= 0:
        return None
    return key, setup, generation / cycles


def _settings_key(run_dir: Path) -> str | None:
    """The settings key of a run's saved config; None when it has none or it no longer fits lem's schema."""
    try:
        from lem.config.schema import to_dataclass
        from lem.results.summarize import load_config
        from lem.study.identity import settings_key

        config = load_config(run_dir)
        return None if config is None else settings_key(to_dataclass(config))
    except Exception:  # noqa: BLE001 - an old run's config: no estimate from it
        return None
