"""Crash-safe writers: one JSON-lines raw file per process, and atomic JSON files.

A raw line is written with one ``os.write`` of ``line + "\\n"`` and then fsync'd, so a
process killed at any moment leaves every completed line intact; at worst the last line
is partial, and the reader (``lem.results.reader``) drops and flags it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from lem.errors import LemError
from lem.files import write_text_atomic
from lem.records import to_json_dict


def raw_path(run_dir: str | os.PathLike[str], process_index: int) -> Path:
    """Where process ``process_index`` writes its raw records inside ``run_dir``."""
    return Path(run_dir) / "raw" / f"process-{process_index}.jsonl"


def encode_record(record: Any) -> str:
    """One record as one JSON line (no newline). NaN/inf raise ValueError: they are bugs, not data."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        obj = to_json_dict(record)
    elif isinstance(record, dict):
        obj = record
    else:
        raise TypeError(f"expected a lem.records record or a dict, got {type(record).__name__}")
    if "kind" not in obj:
        raise ValueError(f"record has no 'kind' field: {sorted(obj)}")
    try:
        return json.dumps(obj, allow_nan=False, ensure_ascii=False)  # default separators: greppable '"kind": "request"'
    except ValueError as e:  # json says "Out of range float values are not JSON compliant"
        raise ValueError(f"{obj['kind']} record contains NaN or infinity ({e}): {obj!r}") from None


class RawWriter:
    """Appends records to one process's raw file; refuses a file that already exists.

    Use as a context manager::

        with RawWriter(raw_path(run_dir, 0)) as w:
            w.write(HeaderRecord(...))
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.n_written = 0

    def open(self) -> RawWriter:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: records of two runs must never share a file.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            raise LemError(
                f"raw record file {self.path} already exists; use a fresh run directory "
                "(Hydra gives each run its own) instead of mixing two runs' records"
            ) from None
        return self

    def write(self, record: Any) -> None:
        """Serialise ``record`` to one line, write it in one call, flush it to disk."""
        if self._fd is None:
            raise RuntimeError(f"RawWriter({self.path}) is not open; use it as a context manager")
        data = (encode_record(record) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        while written < len(data):  # a short write is rare on regular files; finish the line
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)  # a killed process or a crashed host keeps this line
        self.n_written += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RawWriter:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON so readers see the old file or the new one, never half (and on disk to stay)."""
    path = Path(path)
    write_text_atomic(path, json.dumps(obj, allow_nan=False, indent=2, ensure_ascii=False) + "\n", durable=True)
    return path


def write_jsonl_atomic(path: str | os.PathLike[str], rows: list[Any]) -> Path:
    """Write ``rows`` as JSON lines, atomically (the old file or the new one, never half)."""
    path = Path(path)
    write_text_atomic(path, "".join(json.dumps(r, allow_nan=False, ensure_ascii=False) + "\n" for r in rows), durable=True)
    return path


def write_resolved_config(composed_cfg: Any, run_dir: Path) -> None:
    """``resolved_config.yaml``: the config the run used, interpolations resolved (read by summarize and tracking).

    Credentials in URIs (a tracking or storage URI with a password) are kept out of the run folder:
    this file is written redacted, and the copies Hydra wrote before the job started
    (``.hydra/*.yaml``, the sweep's ``multirun.yaml``) are rewritten redacted.
    """
    from omegaconf import OmegaConf

    from lem.redact import redact

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved_config.yaml").write_text(redact(OmegaConf.to_yaml(composed_cfg, resolve=True)))
    scrub_credentials([*sorted((run_dir / ".hydra").glob("*.yaml")), run_dir.parent / "multirun.yaml"])


def scrub_credentials(paths: list[Path]) -> None:
    """Rewrite each existing text file with credential-bearing URIs redacted (atomically, mode kept)."""
    from lem.redact import redact

    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        clean = redact(text)
        if clean == text:
            continue
        try:
            write_text_atomic(path, clean, mode=path.stat().st_mode & 0o777)
        except OSError:
            pass  # the folder's copy stays as Hydra wrote it; what lem uploads is redacted anyway
