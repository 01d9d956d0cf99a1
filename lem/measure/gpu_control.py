"""NVIDIA GPU settings as sweep axes: a power limit (``gpu.power_limit_w``) and locked SM clocks
(``gpu.locked_sm_clock_mhz``), set through NVML on every measured GPU before the model loads and
restored after the run.

``apply`` checks every GPU before it changes any: the limit against
``nvmlDeviceGetPowerManagementLimitConstraints``, the clock against the graphics clocks NVML lists
as supported (where it lists them). It writes a marker per GPU (``lem.measure.gpu_state``), sets
the limit (``nvmlDeviceSetPowerManagementLimit``, mW), locks the clocks
(``nvmlDeviceSetGpuLockedClocks``, min = max) and reads back what is enforced. A refusal (out of
range, no permission, not supported, no NVML) is one line naming the key and the value, raised
with nothing changed: what was already set is put back first. ``GpuControl.restore`` sets the
previous limit again and resets the locked clocks (NVML cannot read locked clocks, so they return
to the driver's default), then deletes the markers. ``lem.measure.gpu_restore`` restores what a
run that did not finish left behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lem.errors import ConfigError, LemError
from lem.measure.energy.gpu_mapping import (
    GpuTarget,
    as_text,
    resolve_gpus,
    torch_cuda_uuids,
)
from lem.measure.gpu_restore import (
    GpuControlRefused,
    nvml_reason,
    open_nvml,
    restore_one,
    restore_orphans,
    show,
    shutdown,
)
from lem.measure.gpu_state import (
    new_marker,
    pid_alive,
    read_marker,
    remove_marker,
    write_marker,
)
from lem.records import GpuControlDevice, GpuControlRecord

POWER_KEY = "gpu.power_limit_w"
CLOCK_KEY = "gpu.locked_sm_clock_mhz"
ENFORCED_TOLERANCE_W = 0.5

log = logging.getLogger("lem")


@dataclass
class _Gpu:
    target: GpuTarget
    row: GpuControlDevice
    before_mw: int | None = None  # the limit to restore
    power_set: bool = False  # restore sets before_mw again
    clocks_locked: bool = False  # restore resets the locked clocks
    marked: bool = False  # a marker of this GPU exists (restore deletes it)


@dataclass
class GpuControl:
    """The settings applied to one run's GPUs; ``restore`` puts them back (idempotent)."""

    nvml: Any
    power_limit_w: float | None
    locked_sm_clock_mhz: int | None
    gpus: list[_Gpu] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # run-wide: settings a run that did not finish left, restored first
    folder: Path | None = None
    _closed: bool = False

    def record(self) -> GpuControlRecord:
        return GpuControlRecord(
            power_limit_w=self.power_limit_w,
            locked_sm_clock_mhz=self.locked_sm_clock_mhz,
            devices=[g.row for g in self.gpus],
            restored=all(g.row.restored for g in self.gpus),
            notes=list(self.notes),
        )

    def restore(self) -> list[str]:
        """Previous power limits back, locked clocks reset, markers deleted; a sentence per GPU that failed
        (its marker stays, so the next run on that GPU tries again)."""
        problems = []
        for gpu in self.gpus:
            if gpu.row.restored:
                continue
            problem = restore_one(self.nvml, gpu.target.handle, gpu.before_mw if gpu.power_set else None, gpu.clocks_locked)
            if problem is None:
                gpu.row.restored = True
                if gpu.marked:
                    remove_marker(gpu.target.uuid, self.folder)
            elif problem not in gpu.row.notes:
                gpu.row.notes.append(problem)
                problems.append(f"{gpu.row.device}: {problem}")
                log.warning("lem: %s: %s (run `sudo nvidia-smi -i %s -rgc` and set its power limit by hand)", gpu.row.device, problem, gpu.target.uuid)
        if all(g.row.restored for g in self.gpus):
            self.close()
        return problems

    def close(self) -> None:
        """Let go of NVML (once); what could not be restored keeps its marker for the next run."""
        if not self._closed:
            self._closed = True
            shutdown(self.nvml)


def apply(
    cuda_indices: Sequence[int],
    power_limit_w: float | None,
    locked_sm_clock_mhz: int | None,
    *,
    nvml: Any = None,
    env: Mapping[str, str] | None = None,
    folder: Path | None = None,
) -> GpuControl | None:
    """Set the power limit and lock the SM clocks of the GPUs behind ``cuda_indices``; None when neither is asked.

    Raises ``GpuControlRefused`` / ``ConfigError`` (one line, the key and the value) with every GPU as it was.
    """
    if power_limit_w is None and locked_sm_clock_mhz is None:
        return None
    key, value = (POWER_KEY, power_limit_w) if power_limit_w is not None else (CLOCK_KEY, locked_sm_clock_mhz)
    if not cuda_indices:
        raise GpuControlRefused(f"{key}={show(value)}: no CUDA GPU is measured in this run (backend.device=cpu or no GPU); leave {key} unset")
    nvml = open_nvml(key, value, nvml)
    notes = restore_orphans(cuda_indices, nvml=nvml, env=env, folder=folder)
    try:
        targets, _ = resolve_gpus(nvml, cuda_indices, env, torch_cuda_uuids(cuda_indices))
    except LemError as exc:
        shutdown(nvml)
        raise GpuControlRefused(f"{key}={show(value)}: {exc}") from None
    control = GpuControl(nvml, power_limit_w, locked_sm_clock_mhz, notes=notes, folder=folder)
    try:
        seen: set[str] = set()
        for t in targets:
            if t.uuid not in seen:  # MIG instances of one GPU share its settings
                seen.add(t.uuid)
                control.gpus.append(_check(nvml, t, power_limit_w, locked_sm_clock_mhz, folder))
        for gpu in control.gpus:
            _apply_one(nvml, gpu, power_limit_w, locked_sm_clock_mhz, folder)
    except BaseException:
        control.restore()  # nothing half-written: GPUs already changed go back
        control.close()
        raise
    return control


def _check(nvml: Any, t: GpuTarget, power_limit_w: float | None, clock_mhz: int | None, folder: Path | None) -> _Gpu:
    """What one GPU allows, read before anything changes; refuses what it does not."""
    device, name, h = f"cuda:{t.cuda_index}", _name(nvml, t.handle), t.handle
    row = GpuControlDevice(device=device, uuid=t.uuid, name=name, power_limit_w=power_limit_w, locked_sm_clock_mhz=clock_mhz)
    gpu = _Gpu(t, row)
    held = read_marker(t.uuid, folder)
    key, value = (POWER_KEY, power_limit_w) if power_limit_w is not None else (CLOCK_KEY, clock_mhz)
    if held is not None and held.pid != os.getpid() and pid_alive(held.pid):
        raise GpuControlRefused(
            f"{key}={show(value)}: another lem process (pid {held.pid}) has changed {device} ({name}) and not restored it yet; "
            "wait for it to finish (run.gpu_lease keeps measured jobs off each other's GPUs)"
        )
    if held is not None:  # left by this process (or a dead one) unrestored: the original settings are in the marker
        gpu.marked, gpu.clocks_locked = True, held.clocks_locked
        gpu.before_mw, gpu.power_set = held.power_limit_before_mw, held.power_limit_before_mw is not None
    if power_limit_w is not None:
        try:
            low_mw, high_mw = (int(x) for x in nvml.nvmlDeviceGetPowerManagementLimitConstraints(h))
            if gpu.before_mw is None:
                gpu.before_mw = int(nvml.nvmlDeviceGetPowerManagementLimit(h))
        except Exception as exc:  # noqa: BLE001 - NVMLError: not supported, no permission
            raise _refusal(nvml, POWER_KEY, power_limit_w, row, exc) from None
        row.power_limit_range_w = [low_mw / 1000.0, high_mw / 1000.0]
        row.power_limit_before_w = gpu.before_mw / 1000.0
        if not low_mw <= round(power_limit_w * 1000) <= high_mw:
            raise ConfigError(POWER_KEY, power_limit_w, f"a limit in {low_mw / 1000:g}..{high_mw / 1000:g} W, the range NVML allows on {device} ({name})")
    if clock_mhz is not None:
        supported = supported_sm_clocks_mhz(nvml, h)
        if supported:
            if not supported[0] <= clock_mhz <= supported[-1]:
                raise ConfigError(CLOCK_KEY, clock_mhz, f"an SM clock in {supported[0]}..{supported[-1]} MHz, the range NVML lists for {device} ({name})")
            if clock_mhz not in supported:
                row.notes.append(f"{clock_mhz} MHz is not one of the SM clocks NVML lists: the driver picks a supported one near it")
        else:
            row.notes.append("NVML lists no supported graphics clocks for this GPU: the locked clock was not checked against them")
    return gpu


def _apply_one(nvml: Any, gpu: _Gpu, power_limit_w: float | None, clock_mhz: int | None, folder: Path | None) -> None:
    h, row = gpu.target.handle, gpu.row
    restore_power = power_limit_w is not None or gpu.power_set
    write_marker(new_marker(gpu.target.uuid, gpu.before_mw if restore_power else None, clock_mhz is not None or gpu.clocks_locked), folder)
    gpu.marked = True
    if power_limit_w is not None:
        try:
            nvml.nvmlDeviceSetPowerManagementLimit(h, int(round(power_limit_w * 1000)))
        except Exception as exc:  # noqa: BLE001
            raise _refusal(nvml, POWER_KEY, power_limit_w, row, exc) from None
        gpu.power_set = True
        row.enforced_power_limit_w = _read_w(nvml, "nvmlDeviceGetEnforcedPowerLimit", h)
        enforced = row.enforced_power_limit_w
        if enforced is not None and abs(enforced - power_limit_w) > ENFORCED_TOLERANCE_W:
            row.notes.append(f"NVML enforces {enforced:g} W, not the {power_limit_w:g} W set (another limit on the board is lower)")
    if clock_mhz is not None:
        try:
            nvml.nvmlDeviceSetGpuLockedClocks(h, int(clock_mhz), int(clock_mhz))
        except Exception as exc:  # noqa: BLE001
            raise _refusal(nvml, CLOCK_KEY, clock_mhz, row, exc) from None
        gpu.clocks_locked = True
        try:  # NVML has no getter for locked clocks: the SM clock right now is what can be read back
            row.sm_clock_mhz_after = float(nvml.nvmlDeviceGetClockInfo(h, getattr(nvml, "NVML_CLOCK_SM", 1)))
        except Exception:  # noqa: BLE001
            row.sm_clock_mhz_after = None


def supported_sm_clocks_mhz(nvml: Any, handle: Any) -> list[int]:
    """Every graphics clock NVML lists for any memory clock, sorted; [] when it lists none."""
    clocks: set[int] = set()
    try:
        for mem_mhz in nvml.nvmlDeviceGetSupportedMemoryClocks(handle):
            clocks.update(int(c) for c in nvml.nvmlDeviceGetSupportedGraphicsClocks(handle, int(mem_mhz)))
    except Exception:  # noqa: BLE001 - not supported on this GPU, or a binding without the call
        return []
    return sorted(clocks)


def _refusal(nvml: Any, key: str, value: float | int, row: GpuControlDevice, exc: BaseException) -> GpuControlRefused:
    why = nvml_reason(nvml, exc)
    if why == "no permission":
        command = f"sudo nvidia-smi -i {row.uuid} -pl {show(value)}" if key == POWER_KEY else f"sudo nvidia-smi -i {row.uuid} -lgc {value},{value}"
        fix = f"run lem as root, or set it beforehand with `{command}` and leave {key} unset"
    elif why == "not supported":
        fix = f"this GPU or its driver cannot change it; leave {key} unset"
    else:
        fix = f"check the GPU with nvidia-smi, or leave {key} unset"
    return GpuControlRefused(f"{key}={show(value)}: NVML refused on {row.device} ({row.name}): {why}; {fix}")


def _name(nvml: Any, handle: Any) -> str:
    try:
        return as_text(nvml.nvmlDeviceGetName(handle))
    except Exception:  # noqa: BLE001
        return "unknown GPU"


def _read_w(nvml: Any, call: str, handle: Any) -> float | None:
    try:
        return float(getattr(nvml, call)(handle)) / 1000.0
    except Exception:  # noqa: BLE001
        return None
