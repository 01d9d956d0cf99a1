"""MLflow tracking: every lem run and every Hydra multirun logged, comparable in the MLflow UI.

The order of the data flow ends here: a finished run directory (raw records, summary,
config) is read back and logged — ``mlflow_sink`` for one run, ``callback`` for a Hydra
sweep (one parent run, each job a child), ``sync`` for result folders logged later,
``export`` for a CSV of the store, ``ui`` for ``make ui``.

This package's ``__init__`` stays light: MLflow and matplotlib are imported only by the
code that logs, so ``python -m lem --help`` and ``--cfg job`` never pay for them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_tracked"]


def run_tracked(lem_cfg: Any, composed_cfg: Any, run_dir: Any, run_fn: Any) -> Any:
    """Call ``run_fn()`` (the measured run) and log ``run_dir`` to MLflow, whatever happens.

    See :func:`lem.tracking.job.run_tracked`.
    """
    from lem.tracking.job import run_tracked as _run_tracked

    return _run_tracked(lem_cfg, composed_cfg, run_dir, run_fn)
