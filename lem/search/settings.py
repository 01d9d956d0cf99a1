"""What an Optuna study of lem is made of: its settings, the summary.json values it reads,
what a trial's job leaves behind, and the user attributes lem stores on trials and studies.

Shared by the loop (``lem.search.study``), the storage (``lem.search.storage``) and the
report; imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lem.errors import LemError

J_PER_TOKEN = "energy.j_per_output_token"
TOKENS_PER_S = "throughput.output_tokens_per_s"
TTFT_P99_MS = "latency.ttft_ms.p99"
TPOT_P99_MS = "latency.tpot_ms.p99"
J_PER_GOOD_TOKEN = "goodput.j_per_good_output_token"  # energy per output token of requests that met slo.*
GOODPUT_PREFIX = "goodput."  # objectives null when no request met slo.*: the trial is pruned, not failed
# Sweeper keys for latency limits → the summary.json value each one caps.
LIMIT_KEYS = {"max_ttft_p99_ms": TTFT_P99_MS, "max_tpot_p99_ms": TPOT_P99_MS}
RECORDED_METRICS = (J_PER_TOKEN, TOKENS_PER_S, TTFT_P99_MS, TPOT_P99_MS)
SHORT_NAMES = {J_PER_TOKEN: "J/token", J_PER_GOOD_TOKEN: "J/good token", TOKENS_PER_S: "tok/s", TTFT_P99_MS: "TTFT p99 ms", TPOT_P99_MS: "TPOT p99 ms"}


def metric_names(objectives: list[str]) -> list[str]:
    """The objectives' names as the study records them (``study.set_metric_names``, shown by
    optuna-dashboard): stable identifiers, the summary.json path less its section
    (``energy.j_per_output_token`` → ``j_per_output_token``, ``latency.ttft_ms.p99`` → ``ttft_ms_p99``);
    the whole path, dots as underscores, when two objectives would otherwise share a name."""
    short = [p.split(".", 1)[-1].replace(".", "_") for p in objectives]
    return short if len(set(short)) == len(short) else [p.replace(".", "_") for p in objectives]

# User attributes lem stores on each trial (read back by the report and by a resumed study).
ATTR_METRICS = "lem.metrics"
ATTR_RUN_DIR = "lem.run_dir"
ATTR_ERROR = "lem.error"
ATTR_DUPLICATE_OF = "lem.duplicate_of"
ATTR_INTERRUPTED = "lem.interrupted"
ATTR_SKIPPED = "lem.skipped"
ATTR_WORKER = "lem.worker"
ATTR_PARENT = "lem.mlflow_parent"  # {"run_id", "sweep_id"}: the sweep parent run of the session that asked the trial
ATTR_OVERRIDES = "lem.overrides"
ATTR_CONSTRAINTS = "lem.constraints"
ATTR_ENERGY_SOURCE = "lem.energy_source"  # summary.json's energy.source: "estimated" when J/token is a model's figure
ATTR_MLFLOW_RUN_ID = "mlflow_run_id"
STUDY_ATTR_IDENTITY = "lem.identity"

# Parameter importances (fANOVA's forest on a handful of points) from fewer trials than this are noise.
MIN_TRIALS_FOR_IMPORTANCES = 10


def importances_warning(n_trials: int) -> str | None:
    """The caveat of parameter importances computed from ``n_trials`` trials; None when there are enough."""
    if n_trials >= MIN_TRIALS_FOR_IMPORTANCES:
        return None
    return f"parameter importances from {n_trials} trials are unreliable (fewer than {MIN_TRIALS_FOR_IMPORTANCES})"


class Importances(dict):  # type: ignore[type-arg]
    """Each objective's {parameter: importance}, and how many trials they came from (``n_trials``)
    with the caveat for too few (``warning``), which the importances plot puts in its title."""

    def __init__(self, values: dict[str, dict[str, float]] | None = None, n_trials: int = 0) -> None:
        super().__init__(values or {})
        self.n_trials = n_trials
        self.warning = importances_warning(n_trials) if self else None


@dataclass
class StudySettings:
    study_name: str
    storage: str
    directions: list[str]
    objectives: list[str]
    n_trials: int
    n_jobs: int = 1
    max_failure_rate: float = 0.25
    limits: dict[str, float] = field(default_factory=dict)  # summary.json path → largest allowed value
    deduplicate: bool = True
    identity: list[str] = field(default_factory=list)  # the fixed overrides that define the workload

    def __post_init__(self) -> None:
        if not self.directions or any(d not in ("minimize", "maximize") for d in self.directions):
            raise LemError(f"hydra.sweeper.direction={self.directions}: expected minimize, maximize or a list of them")
        if len(self.objectives) != len(self.directions):
            raise LemError(
                f"hydra.sweeper.objectives={self.objectives}: expected one summary.json value per direction "
                f"({len(self.directions)}: {self.directions})"
            )
        if self.n_trials < 1:
            raise LemError(f"hydra.sweeper.n_trials={self.n_trials}: expected a number >= 1")
        if self.n_jobs < 1:
            raise LemError(f"hydra.sweeper.n_jobs={self.n_jobs}: expected a number >= 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise LemError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: expected a number in [0, 1]")

    @property
    def recorded(self) -> list[str]:
        return list(dict.fromkeys([*self.objectives, *RECORDED_METRICS, *self.limits]))


@dataclass
class TrialOutcome:
    """What one trial's job left behind."""

    metrics: dict[str, float | None] = field(default_factory=dict)  # summary.json path → value
    run_dir: Path | None = None
    error: str | None = None  # one line; set when the job failed
    mlflow_run_id: str | None = None
    energy_source: str | None = None  # summary.json's energy.source ("estimated": no sensor)
