"""Setting environment variables for a while and putting back what was there (unset stays unset).

One helper for every place lem hands values to the processes and jobs it starts through the
environment: a spawned engine worker's extra variables, a sweep's parent run, a sweep's size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


def set_environ(values: Mapping[str, str]) -> dict[str, str | None]:
    """Set ``values`` in ``os.environ``; return what those keys held before (None: unset)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    return before


def restore_environ(before: Mapping[str, str | None]) -> None:
    """Put back what :func:`set_environ` returned."""
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in the environment inside the block only."""
    before = set_environ(values)
    try:
        yield
    finally:
        restore_environ(before)
