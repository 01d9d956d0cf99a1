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


def write_json_atomic(path: Path, data: Mapping[str, Any], *, indent: int | None = None) -> None:
    """Write ``data`` as JSON through a temporary file renamed into place: readers never see half a file.

    Raises OSError (callers that only cache decide whether that matters).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes it 0600; a written file is 0644 under umask 022
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=indent)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
