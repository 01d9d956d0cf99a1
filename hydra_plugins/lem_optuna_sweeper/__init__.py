"""lem's Hydra sweeper on Optuna's ask/tell API (Optuna >= 4): ``hydra/sweeper=lem_optuna``.

Hydra imports every module of this package at start-up to find plugins, so nothing here
imports Optuna or MLflow; the study itself lives in ``lem.search``.
"""
