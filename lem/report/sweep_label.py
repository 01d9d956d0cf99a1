"""Where a job stands in its sweep, for the progress display: "job 2 of 6", "trial 3 of 20".

The job's number comes from Hydra (``hydra.job.num``, 0-based, also its folder's name); the
sweep's size from the launching process's environment: :class:`SweepSizeCallback` (registered in
``conf/config.yaml``) counts a BasicSweeper multirun's jobs when it starts, and lem's Optuna
sweeper names ``n_trials`` (``lem.search.hydra_sweep``). The label is computed in the launching
process and sent with the job: an engine worker is spawned once and reused, so its own
environment is stale.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any

from hydra.experimental.callback import Callback

from lem.environ import environment, restore_environ, set_environ

ENV_SWEEP_SIZE = "LEM_SWEEP_SIZE"  # jobs in this multirun (BasicSweeper) or the study's n_trials (Optuna)
ENV_SWEEP_UNIT = "LEM_SWEEP_UNIT"  # "job" or "trial"


def sweep_label() -> str | None:
    """``job i of N`` / ``trial i of N`` for the current Hydra multirun job; None outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        num = int(hc.job.num)
    except Exception:  # noqa: BLE001 - outside a Hydra job
        return None
    unit = os.environ.get(ENV_SWEEP_UNIT) or "job"
    size = os.environ.get(ENV_SWEEP_SIZE, "")
    total = int(size) if size.isdigit() and int(size) > 0 else None
    if total is None:
        return f"{unit} {num + 1}"
    # A study's trial numbers run past n_trials when trials are skipped as duplicates or fail.
    return f"{unit} {num + 1} of {total}" if num < total else f"{unit} {num + 1} (n_trials={total})"


def basic_sweep_size(overrides: list[str], params: dict[str, Any] | None = None) -> int | None:
    """How many jobs Hydra's BasicSweeper makes of ``overrides`` (+ ``hydra.sweeper.params``); None if unknown."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(overrides)
        parsed = OverridesParser.create().parse_overrides(lines)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # noqa: BLE001 - a sweep syntax only Hydra's config loader resolves (glob): no total shown
        return None


def sweep_size(unit: str, size: int) -> AbstractContextManager[None]:
    """The environment :func:`sweep_label` reads, for the jobs launched inside the block."""
    return environment({ENV_SWEEP_SIZE: str(size), ENV_SWEEP_UNIT: unit})


class SweepSizeCallback(Callback):
    """Puts a BasicSweeper multirun's job count in the environment for :func:`sweep_label`."""

    def __init__(self) -> None:
        self._before: dict[str, str | None] = {}

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
                return  # lem's Optuna sweeper names its n_trials itself
            params = config.hydra.sweeper.get("params") or {}
            size = basic_sweep_size([str(o) for o in config.hydra.overrides.task], {str(k): str(v) for k, v in params.items()})
        except Exception:  # noqa: BLE001 - a label without its total
            return
        if size:
            self._set({ENV_SWEEP_SIZE: str(size), ENV_SWEEP_UNIT: "job"})

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        restore_environ(self._before)
        self._before = {}

    def _set(self, values: dict[str, str]) -> None:
        for key, value in set_environ(values).items():
            self._before.setdefault(key, value)
