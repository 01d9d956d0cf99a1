"""Machine-wide markers of GPU settings lem changed: one JSON file per GPU, written before the change.

A run that sets a power limit or locks clocks (``lem.measure.gpu_control``) first writes
``<uuid>.gpu-control.json`` beside the GPU lease lock files (``$LEM_GPU_LOCK_DIR``, default
``/tmp/lem-gpu-locks``): the GPU's UUID, the power limit it had, whether lem locks its clocks, the
pid and the time. The file is deleted once the settings are restored. A marker whose pid is no
longer alive was left by a run that did not finish (SIGKILL, out of memory, a lost node): the next
run on that GPU, or the launcher that saw its engine worker die, restores from it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lem.files import write_text_atomic

DEFAULT_LOCK_DIR = "/tmp/lem-gpu-locks"  # shared with the GPU leases (lem.launch.gpu_lease)
SUFFIX = ".gpu-control.json"


def lock_dir() -> Path:
    """The machine-wide folder of GPU lease locks and GPU-setting markers."""
    return Path(os.environ.get("LEM_GPU_LOCK_DIR", DEFAULT_LOCK_DIR))


@dataclass
class Marker:
    """What lem changed on one GPU and how to put it back."""

    uuid: str  # the physical GPU (NVML ``GPU-...``)
    power_limit_before_mw: int | None  # the power management limit to restore; None: lem did not change it
    clocks_locked: bool  # lem locks the GPU clocks: reset them on restore
    pid: int  # the process that changed the settings
    time_unix_s: float

    @property
    def power_limit_before_w(self) -> float | None:
        return None if self.power_limit_before_mw is None else self.power_limit_before_mw / 1000.0


def marker_path(uuid: str, folder: Path | None = None) -> Path:
    return (folder or lock_dir()) / f"{uuid}{SUFFIX}"


def write_marker(marker: Marker, folder: Path | None = None) -> None:
    """Atomically (a reader sees the whole file or none) and durably: it must survive the crash it is for."""
    path = marker_path(marker.uuid, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(asdict(marker)) + "\n", durable=True)


def read_markers(folder: Path | None = None) -> list[Marker]:
    """Every readable marker in the folder; [] when there is none (no NVML needed to learn that)."""
    folder = folder or lock_dir()
    try:
        paths = sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX))
    except OSError:
        return []
    found = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
            found.append(
                Marker(
                    uuid=str(data["uuid"]),
                    power_limit_before_mw=None if data.get("power_limit_before_mw") is None else int(data["power_limit_before_mw"]),
                    clocks_locked=bool(data.get("clocks_locked")),
                    pid=int(data["pid"]),
                    time_unix_s=float(data.get("time_unix_s") or 0.0),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a foreign or damaged file: never act on a guess
    return found


def read_marker(uuid: str, folder: Path | None = None) -> Marker | None:
    return next((m for m in read_markers(folder) if m.uuid == uuid), None)


def remove_marker(uuid: str, folder: Path | None = None) -> None:
    marker_path(uuid, folder).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """The process exists (owned by anyone); a zombie that was never reaped counts as gone."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def new_marker(uuid: str, power_limit_before_mw: int | None, clocks_locked: bool) -> Marker:
    return Marker(uuid, power_limit_before_mw, clocks_locked, os.getpid(), time.time())
