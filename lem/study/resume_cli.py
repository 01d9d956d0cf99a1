"""``lem resume``: see :mod:`lem.study.cli`."""

from lem.study.cli import resume_main as main

__all__ = ["main"]
