"""The Sweeper Hydra instantiates for ``hydra/sweeper=lem_study``; the work is in ``lem.study``.

Hydra's basic sweeper's cartesian product of the command's overrides (and ``params``), planned
before anything starts (``lem.study.callback``), ordered, paused between runs, resumable.
"""

# No ``from __future__ import annotations``: Hydra executes plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class LemStudySweeperConf:
    _target_: str = "hydra_plugins.lem_study_sweeper.sweeper.LemStudySweeper"
    params: Optional[Dict[str, str]] = None  # more sweep overrides, as Hydra's basic sweeper takes them


# Also under Hydra's default name, replacing its basic sweeper (Hydra registers its core plugins before
# scanning hydra_plugins): every plain -m sweep is a study, while a config that overrides
# hydra/sweeper (hparams_search=... picks lem_optuna) still can.
for _name in ("lem_study", "basic"):
    ConfigStore.instance().store(group="hydra/sweeper", name=_name, node=LemStudySweeperConf, provider="lem")


class LemStudySweeper(Sweeper):
    def __init__(self, params: Optional[Dict[str, str]] = None) -> None:
        self.params = dict(params or {})
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: List[str]) -> Any:
        from lem.study.sweep import sweep

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        return sweep(self.config, self.hydra_context.config_loader, self.launcher)
