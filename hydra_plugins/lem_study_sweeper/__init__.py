"""lem's sweeper for grid sweeps (``hydra/sweeper=lem_study``, the default): a ``-m`` sweep run as a study.

Hydra imports every module of this package at start-up to find plugins: nothing heavy here;
the study itself lives in ``lem.study``.
"""
