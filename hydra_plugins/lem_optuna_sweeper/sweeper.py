"""The Sweeper Hydra instantiates for ``hydra/sweeper=lem_optuna``; the work is in ``lem.search.hydra_sweep``."""

from __future__ import annotations

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LemOptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        objectives: Optional[List[str]],
        storage: Optional[str],
        study_name: Optional[str],
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        max_ttft_p99_ms: Optional[float],
        max_tpot_p99_ms: Optional[float],
        deduplicate: bool,
        params: Optional[DictConfig],
    ) -> None:
        self.options = {
            "sampler": sampler,
            "direction": direction,
            "objectives": objectives,
            "storage": storage,
            "study_name": study_name,
            "n_trials": n_trials,
            "n_jobs": n_jobs,
            "max_failure_rate": max_failure_rate,
            "max_ttft_p99_ms": max_ttft_p99_ms,
            "max_tpot_p99_ms": max_tpot_p99_ms,
            "deduplicate": deduplicate,
            "params": params,
        }
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: List[str]) -> None:
        from lem.search.hydra_sweep import run_hydra_study

        assert self.config is not None and self.launcher is not None
        run_hydra_study(self.options, self.config, self.launcher, arguments)
