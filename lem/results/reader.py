"""Read raw JSON-lines records back, tolerating what a killed process leaves behind.

Records come back as plain dicts (the JSON as written) so that a reader never loses a field
that a newer writer added; ``lem.records`` documents what the fields mean.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lem.errors import LemError
from lem.records import RAW_SCHEMA_VERSION

SUPPORTED_RAW_VERSIONS: tuple[str, ...] = (RAW_SCHEMA_VERSION,)
_PROCESS_FILE = re.compile(r"^process-(\d+)\.jsonl$")


@dataclass
class RawProcessRecords:
    """Everything one process recorded, grouped by ``kind``, in file order."""

    path: Path
    header: dict[str, Any]
    phases: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    flops: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    other: list[dict[str, Any]] = field(default_factory=list)  # kinds this reader does not know
    torn_last_line: bool = False  # the last line was partial (killed mid-write) and was dropped

    @property
    def complete(self) -> bool:
        """True when the process reached its end record (it was not killed)."""
        return self.end is not None

    @property
    def process_index(self) -> int:
        return int(self.header.get("process_index", 0))

    @property
    def t0_unix_s(self) -> float:
        """The unix time the process's relative times (``start_s``, ``t_s``, ...) count from."""
        return float(self.header.get("t0_unix_s", 0.0))

    def others(self, kind: str) -> list[dict[str, Any]]:
        """The records of one kind this reader does not group (``energy_meter``, ``power_samples``, ...)."""
        return [r for r in self.other if r.get("kind") == kind]

    def idle_baseline(self, when: str = "before_warmup") -> dict[str, Any] | None:
        """The idle baseline every window is net of, or (``when="after_generation"``) its re-measurement."""
        recs = [r for r in self.others("idle_baseline") if r.get("when", "before_warmup") == when]
        return recs[-1] if recs else None


def clock_offsets(procs: list[RawProcessRecords]) -> dict[int, float]:
    """Seconds to add to each process's times to put them on the run's clock (earliest t0 = 0), by ``id(process)``.

    Offsets from the earliest t0, not absolute unix times: a single process keeps its exact
    perf_counter differences instead of losing digits to a 1.7e9 s epoch.
    """
    t_ref = min(p.t0_unix_s for p in procs)
    return {id(p): p.t0_unix_s - t_ref for p in procs}


def read_raw_file(path: str | os.PathLike[str]) -> RawProcessRecords:
    """Parse one ``process-<i>.jsonl``; a torn last line is dropped and flagged, any other bad line is an error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LemError(f"cannot read raw record file {path}: {e.strerror or e}") from None
    records, torn = _parse_lines(path, data)
    if not records:
        raise LemError(f"{path}: no complete records (the process was killed before writing its header?)")
    header = records[0]
    if header.get("kind") != "header":
        raise LemError(f"{path}: first record is kind={header.get('kind')!r}; expected the header")
    version = header.get("schema_version")
    if version not in SUPPORTED_RAW_VERSIONS:
        raise LemError(
            f"{path}: schema_version={version!r} is not supported; this lem reads "
            f"{', '.join(SUPPORTED_RAW_VERSIONS)} (summarise it with the lem version that wrote it)"
        )
    out = RawProcessRecords(path=path, header=header, torn_last_line=torn)
    groups = {"phase": out.phases, "request": out.requests, "memory": out.memory, "flops": out.flops}
    for rec in records[1:]:
        kind = rec.get("kind")
        if kind in groups:
            groups[kind].append(rec)
        elif kind == "end":
            out.end = rec
        elif kind == "header":
            raise LemError(f"{path}: a second header record; two runs were written into one file")
        else:
            out.other.append(rec)
    return out


def _parse_lines(path: Path, data: bytes) -> tuple[list[dict[str, Any]], bool]:
    lines = data.split(b"\n")
    # After split, the final element is what follows the last newline: b"" for a clean file.
    last_unterminated = lines.pop()
    records: list[dict[str, Any]] = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        records.append(_decode(path, lineno, raw))
    torn = False
    if last_unterminated.strip():
        try:
            # A prefix of a JSON object is never itself a complete object, so parsing proves it whole.
            records.append(_decode(path, len(lines) + 1, last_unterminated))
        except LemError:
            torn = True
    return records, torn


def _decode(path: Path, lineno: int, raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LemError(f"{path}:{lineno}: not valid JSON ({e}); the raw file is corrupt") from None
    if not isinstance(obj, dict) or "kind" not in obj:
        raise LemError(f"{path}:{lineno}: expected a JSON object with a 'kind' field")
    return obj


def raw_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """``<run_dir>/raw/process-*.jsonl`` sorted by process index (numerically: 2 before 10)."""
    raw_dir = Path(run_dir) / "raw"
    found = []
    if raw_dir.is_dir():
        for p in raw_dir.iterdir():
            m = _PROCESS_FILE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def read_run(run_dir: str | os.PathLike[str]) -> list[RawProcessRecords]:
    """All processes' records of one run, by process index.

    A file with nothing in it (a process killed before its header) is skipped; the summary
    notices the missing process through the headers' ``world_size``.
    """
    files = raw_files(run_dir)
    if not files:
        raise LemError(f"no raw records in {Path(run_dir) / 'raw'} (expected process-<i>.jsonl); is {run_dir} a lem run directory?")
    out = []
    for p in files:
        if not p.read_bytes().strip():
            continue
        out.append(read_raw_file(p))
    if not out:
        raise LemError(f"every raw record file in {Path(run_dir) / 'raw'} is empty; the run was killed before it recorded anything")
    return out
