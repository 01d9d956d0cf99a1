"""MLflow tracking: every lem run and every Hydra multirun logged, comparable in the MLflow UI.

The data flow ends here: a finished run folder (raw records, summary, config) is read back and
logged — ``job`` for the job that just ended, ``callback`` for a Hydra sweep (one parent run,
each job a child), ``sync`` for result folders logged later, ``export`` for a CSV of the
store, ``ui`` for ``make ui``. MLflow and matplotlib are imported only by the code that logs,
so ``python -m lem --help`` and ``--cfg job`` never pay for them.
"""
