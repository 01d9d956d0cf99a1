"""Start spawned child processes from any parent (including a joblib/loky worker), and end them with it.

A spawned child re-applies its parent's global start method; inside a loky worker that method is
"loky", which a plain child cannot find ("cannot find context for 'loky'"). The child only needs
"spawn", so that is what it is told.
"""

from __future__ import annotations

import multiprocessing.spawn
import os
import signal
import threading
import time
from typing import Any

from lem.environ import environment

_LOCK = threading.Lock()
_STANDARD = ("spawn", "fork", "forkserver")


def start(process: Any, env: dict[str, str] | None = None) -> None:
    """``process.start()`` for a process of the spawn context, whatever this process's own start method is.

    ``env`` is added to the child's environment (a spawned child takes ``os.environ`` as it is at start).
    """
    with _LOCK, environment(env or {}):
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


PARENT_CHECK_INTERVAL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """End this worker when the launching process is gone (killed with SIGKILL, it cannot tell us).

    On Linux the kernel kills the worker the moment its parent dies (PR_SET_PDEATHSIG), so a killed
    run's worker writes nothing after it; elsewhere a watchdog thread notices within half a second.
    """
    _kill_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(PARENT_CHECK_INTERVAL_S)

    threading.Thread(target=watch, name="lem-parent-watch", daemon=True).start()


def _kill_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog thread alone
        pass
