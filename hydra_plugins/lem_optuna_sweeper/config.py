"""The sweeper's configuration (``hydra/sweeper: lem_optuna``) and its samplers (``hydra/sweeper/sampler``).

Same keys as Hydra's official Optuna sweeper (sampler, direction, storage, study_name,
n_trials, n_jobs, max_failure_rate, params), plus lem's: the summary.json values to optimise
(``objectives``), latency limits that make a trial infeasible, and ``deduplicate``.
"""

# No ``from __future__ import annotations``: Hydra executes plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class SamplerConf:
    _target_: str = MISSING
    seed: Optional[int] = None
    # Random trials before the model-based ones; in every sampler's config so a preset may set it
    # and still let the command line pick another sampler (samplers without it ignore it).
    n_startup_trials: Optional[int] = None


@dataclass
class TPESamplerConf(SamplerConf):
    """https://optuna.readthedocs.io/en/stable/reference/samplers/generated/optuna.samplers.TPESampler.html"""

    _target_: str = "optuna.samplers.TPESampler"
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    group: bool = False
    constant_liar: bool = False


@dataclass
class RandomSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class GridSamplerConf(SamplerConf):
    """Every configuration of a discrete space (choice / range), in random order; n_trials caps it."""

    _target_: str = "optuna.samplers.GridSampler"


@dataclass
class NSGAIISamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class GPSamplerConf(SamplerConf):
    """Gaussian-process Bayesian optimisation (needs torch and scipy)."""

    _target_: str = "optuna.samplers.GPSampler"
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class LemOptunaSweeperConf:
    _target_: str = "hydra_plugins.lem_optuna_sweeper.sweeper.LemOptunaSweeper"
    # The sampler is built by the sweeper (it adds the grid, the seed offset, constraints), not by Hydra.
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])

    sampler: Any = MISSING
    # minimize | maximize, or a list of them (one per objective)
    direction: Any = "minimize"
    # summary.json values, one per direction; null: J/token, then output tokens/s for a second direction
    objectives: Optional[List[str]] = None
    # SQLAlchemy URL (sqlite:///path.db, postgresql://...); null: sqlite:///<hydra.sweep.dir>/optuna.db
    storage: Optional[str] = None
    study_name: Optional[str] = None
    # measured trials in the study in total: a rerun resumes up to this number
    n_trials: int = 20
    # trials asked per batch (the launcher runs a batch; BasicLauncher runs it in this process, one by one)
    n_jobs: int = 1
    # the study stops once failed trials exceed max_failure_rate x n_trials
    max_failure_rate: float = 0.25
    # latency limits (ms): a trial over one is infeasible, never best and never on the front
    max_ttft_p99_ms: Optional[float] = None
    max_tpot_p99_ms: Optional[float] = None
    # a sampled configuration identical to a measured one reuses that result instead of measuring again
    deduplicate: bool = True
    # the search space, in Hydra's sweep syntax: {batching.batch_size: "choice(1, 2, 4)", ...}
    params: Optional[Dict[str, Any]] = None


_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="lem_optuna", node=LemOptunaSweeperConf, provider="lem")
for _name, _node in (
    ("tpe", TPESamplerConf),
    ("random", RandomSamplerConf),
    ("grid", GridSamplerConf),
    ("nsgaii", NSGAIISamplerConf),
    ("gp", GPSamplerConf),
):
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="lem")
