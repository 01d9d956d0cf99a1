"""Output folders a run owns: claimed atomically, checked before anything loads.

Two runs started in the same second would share ``outputs/DATE/HH-MM-SS``. The default
``hydra.run.dir`` and ``hydra.sweep.dir`` (conf/config.yaml) are therefore wrapped in the
``lem.claim`` resolver: ``${lem.claim:run,outputs/...}`` makes the folder with ``os.mkdir``, which
fails when it exists, and then tries ``HH-MM-SS-1``, ``HH-MM-SS-2``, ...; the folder it made is this
process's alone. Hydra resolves the pattern more than once (the run, its callbacks, every job of a
sweep): the resolver caches its value in the config (copied to each job's config by Hydra, like
``${now:}``) and in the process's ``Session``, so every reader gets the same folder. The ``kind``
argument (``run`` or ``sweep``) makes the resolver claim only in the matching mode (``-m`` or not):
reading ``hydra.run.dir`` during a sweep (a resolved copy of the config) claims nothing.

A folder named explicitly (``hydra.run.dir=DIR``) is not renamed; :func:`check_run_dir` refuses
it when it already holds another run's results or cannot be written, before any model loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

RESOLVER = "lem.claim"
RESULT_MARKERS = ("raw", "summary.json", "error.txt", "interrupted.txt")  # what makes a folder a run's
MAX_SUFFIX = 10_000


def register_resolver() -> None:
    """Make ``${lem.claim:KIND,PATH}`` available to Hydra's config (call before composing)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve, use_cache=True)


def _resolve(kind: str, pattern: Any) -> str:
    wanted = {"run": False, "sweep": True}.get(str(kind))
    if wanted is None or wanted != _multirun():
        return str(pattern)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # every rank of a torchrun job writes into the one folder
        return str(pattern)
    return claim(str(pattern), kind=str(kind))


def _multirun() -> bool:
    """Whether this lem command is a sweep (``-m``). A resolver with ``use_cache`` cannot see the config;
    jobs run elsewhere (joblib, submitit) get the value resolved here through Hydra's copied cache."""
    import sys

    args = sys.argv[1:]
    return "-m" in args or "--multirun" in args or any(a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in args)


def claim(pattern: str, kind: str = "run") -> str:
    """A new folder at ``pattern``, or at ``pattern-1``, ``pattern-2``...: the first that did not exist.

    The same ``(kind, pattern)`` in one session returns the folder claimed the first time.
    Raises OSError when the folder cannot be made (the parent is a file, read-only, ...).
    """
    from lem.session import current

    memo: dict[str, str] = _claims(current())
    key = f"{kind}:{pattern}"
    if key in memo:
        return memo[key]
    base = Path(pattern)
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(MAX_SUFFIX):
        candidate = base if i == 0 else base.with_name(f"{base.name}-{i}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        memo[key] = str(candidate)
        return memo[key]
    raise FileExistsError(f"{pattern}: {MAX_SUFFIX} folders of that name exist already")


def _claims(session: Any) -> dict[str, str]:
    claims = getattr(session, "claimed_dirs", None)
    if claims is None:  # a session from before the field existed
        claims = {}
        session.claimed_dirs = claims
    return claims


def claimed_by_this_process(path: str | os.PathLike[str]) -> bool:
    from lem.session import current

    target = os.path.abspath(path)
    return any(os.path.abspath(p) == target for p in _claims(current()).values())


def check_run_dir(path: str | os.PathLike[str], key: str = "hydra.run.dir", *, may_hold_results: bool = False) -> str | None:
    """Why lem must not write into ``path`` (one line naming ``key``), or None when it may.

    Makes the folder (and its parents) when missing and proves it writable with a probe file.
    """
    import tempfile

    folder = Path(path)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun's ranks share the folder: the others may have written already
        may_hold_results = True
    if not may_hold_results and not claimed_by_this_process(folder) and folder.is_dir():
        held = [m for m in RESULT_MARKERS if (folder / m).exists()]
        if held:
            return (
                f"{key}={folder}: the folder already holds another run's results ({', '.join(held)}); "
                "lem never writes into a run folder it did not make: pick a new folder or move that one away"
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"{key}={folder}: cannot write the run's results there: {exc.strerror or exc}"
    return None


def discard_if_empty(path: str | os.PathLike[str]) -> None:
    """Remove a folder this process claimed and left empty (a run refused before it wrote anything),
    and the date folder and ``outputs/`` above it when they are empty too: a refusal leaves nothing."""
    if not claimed_by_this_process(path):
        return
    folder = Path(path)
    for p in (folder, folder.parent, folder.parent.parent):
        try:
            p.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return
