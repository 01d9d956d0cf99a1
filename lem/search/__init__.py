"""Optuna studies over lem's deployment settings: the engine behind ``hydra/sweeper=lem_optuna``.

The Hydra plugin (``hydra_plugins/lem_optuna_sweeper``) stays a thin shell; the search space
(``space``), the ask/measure/tell loop (``study``, on the Optuna storage of ``storage``, with
the settings and trial attributes of ``settings``), the summary and its MLflow record
(``report``, ``plots``) live here so they can be used and tested without Hydra. This
``__init__`` stays light: Optuna, MLflow and matplotlib load only when a study runs.
"""
