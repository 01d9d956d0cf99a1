"""Start spawned child processes from any parent, including a joblib (loky) worker.

A spawned child re-applies its parent's global start method; inside a loky worker that method is
"loky", which a plain child cannot find ("cannot find context for 'loky'"). The child only needs
"spawn", so that is what it is told.
"""

from __future__ import annotations

import multiprocessing.spawn
import threading
from typing import Any

_LOCK = threading.Lock()
_STANDARD = ("spawn", "fork", "forkserver")


def start(process: Any) -> None:
    """``process.start()`` for a process of the spawn context, whatever this process's own start method is."""
    with _LOCK:
        original = multiprocessing.spawn.get_preparation_data

        def preparation_data(name: str) -> dict[str, Any]:
            data = original(name)
            if data.get("start_method") not in _STANDARD:
                data["start_method"] = "spawn"
            return data

        multiprocessing.spawn.get_preparation_data = preparation_data
        try:
            process.start()
        finally:
            multiprocessing.spawn.get_preparation_data = original
