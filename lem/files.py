"""Where lem keeps its caches, and the one way it writes a file that readers may open at any time."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """lem's cache: $LEM_CACHE_DIR, else $XDG_CACHE_HOME/lem, else ~/.cache/lem."""
    if os.environ.get("LEM_CACHE_DIR"):
        return Path(os.environ["LEM_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "lem"
    return Path.home() / ".cache" / "lem"


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 less this process's umask."""
    mask = os.umask(0o022)  # reading the umask means setting it; set back at once
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: Path, text: str, *, mode: int | None = None, durable: bool = False) -> None:
    """Write ``text`` through a temporary file renamed into place: readers see the old file or the new
    one, never half, and a full disk leaves no empty file behind.

    ``mode``: the new file's permissions (default: what ``open(path, "w")`` gives, not mkstemp's 0600).
    ``durable``: fsync the file and its folder, so the rename survives a power cut.
    Raises OSError (callers that only cache decide whether that matters).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode() if mode is None else mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic within one filesystem: the same folder guarantees that
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself; not every platform can open a directory, which is harmless.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Mapping[str, Any], *, indent: int | None = None) -> None:
    """Write ``data`` as JSON, atomically (``write_text_atomic``). Raises OSError."""
    write_text_atomic(path, json.dumps(data, indent=indent))
