"""``lem plan``: see :mod:`lem.study.cli`."""

from lem.study.cli import plan_main as main

__all__ = ["main"]
