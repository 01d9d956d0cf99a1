"""Putting NVIDIA GPU settings back: after a run, and after a run that did not finish.

``restore_one`` sets a GPU's previous power limit again and resets its locked clocks.
``restore_orphans`` (at the start of every CUDA run) and ``restore_left_by`` (in the launcher,
once its engine worker died or was killed) restore from the markers of ``lem.measure.gpu_state``
whose process is gone, with one warning line per GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.errors import LemError
from lem.measure.energy.gpu_mapping import as_text, resolve_gpus, torch_cuda_uuids
from lem.measure.gpu_state import Marker, pid_alive, read_markers, remove_marker

NVML_ERROR_NOT_SUPPORTED = 3  # nvml.h; the binding's constants are used when it has them
NVML_ERROR_NO_PERMISSION = 4

log = logging.getLogger("lem")


class GpuControlRefused(LemError):
    """NVML cannot or may not apply a GPU setting here: one line, exit 2, nothing left changed."""


def restore_orphans(
    cuda_indices: Sequence[int], *, nvml: Any = None, env: Mapping[str, str] | None = None, folder: Path | None = None
) -> list[str]:
    """Restore the settings a run that did not finish left on these GPUs (its marker's pid is gone).

    One warning line per GPU restored. Markers of live processes are left alone. Cheap when there is
    no marker: NVML is not even opened.
    """
    markers = [m for m in read_markers(folder) if not pid_alive(m.pid)]
    if not markers or not cuda_indices:
        return []
    opened = nvml is None
    try:
        nvml = open_nvml("gpu", None, nvml) if opened else nvml
    except LemError:
        return []  # no NVML here: nothing this run could have changed either
    try:
        try:
            targets, _ = resolve_gpus(nvml, cuda_indices, env, torch_cuda_uuids(cuda_indices))
        except Exception:  # noqa: BLE001 - GPUs NVML cannot name: the marker waits for a run that can
            return []
        return _restore_markers(nvml, markers, {t.uuid: (t.handle, f"gpu {t.cuda_index}") for t in targets}, folder)
    finally:
        if opened:
            shutdown(nvml)


def restore_left_by(pid: int, *, nvml: Any = None, folder: Path | None = None) -> list[str]:
    """After an engine worker died or was killed: restore what process ``pid`` left on any GPU of this machine."""
    markers = [m for m in read_markers(folder) if m.pid == pid and not pid_alive(pid)]
    if not markers:
        return []
    opened = nvml is None
    try:
        nvml = open_nvml("gpu", None, nvml) if opened else nvml
    except LemError:
        return []
    try:
        handles = {}
        for i in range(int(nvml.nvmlDeviceGetCount())):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            handles[as_text(nvml.nvmlDeviceGetUUID(h))] = (h, f"gpu {i}")
        return _restore_markers(nvml, markers, handles, folder)
    finally:
        if opened:
            shutdown(nvml)


def _restore_markers(nvml: Any, markers: list[Marker], handles: Mapping[str, tuple[Any, str]], folder: Path | None) -> list[str]:
    warnings = []
    for m in markers:
        if m.uuid not in handles:
            continue
        handle, label = handles[m.uuid]
        what = " and ".join(
            ([f"power limit {m.power_limit_before_w:g} W"] if m.power_limit_before_w is not None else []) + (["unlocked clocks"] if m.clocks_locked else [])
        ) or "settings"
        problem = restore_one(nvml, handle, m.power_limit_before_mw, m.clocks_locked)
        if problem is None:
            remove_marker(m.uuid, folder)
            warning = f"{label}: restored {what} left by a run that did not finish (pid {m.pid})"
        else:
            warning = f"{label}: could not restore the {what} a run that did not finish left (pid {m.pid}): {problem}"
        log.warning("lem: %s", warning)
        warnings.append(warning)
    return warnings


def restore_one(nvml: Any, handle: Any, before_mw: int | None, clocks_locked: bool) -> str | None:
    """Set ``before_mw`` again and reset locked clocks; None when done, else what failed and why."""
    errors = []
    if before_mw is not None:
        try:
            nvml.nvmlDeviceSetPowerManagementLimit(handle, int(before_mw))
        except Exception as exc:  # noqa: BLE001
            errors.append(f"power limit not restored to {before_mw / 1000:g} W ({nvml_reason(nvml, exc)})")
    if clocks_locked:
        try:
            nvml.nvmlDeviceResetGpuLockedClocks(handle)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"locked clocks not reset ({nvml_reason(nvml, exc)})")
    return "; ".join(errors) or None


def nvml_reason(nvml: Any, exc: BaseException) -> str:
    """An NVMLError in words: "no permission", "not supported", or NVML's own message."""
    code, text = getattr(exc, "value", None), str(exc)
    if code == getattr(nvml, "NVML_ERROR_NO_PERMISSION", NVML_ERROR_NO_PERMISSION) or "permission" in text.lower():
        return "no permission"
    if code == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED) or "not supported" in text.lower():
        return "not supported"
    return text or type(exc).__name__


def open_nvml(key: str, value: Any, nvml: Any) -> Any:
    """``nvml`` (pynvml unless given) initialised; a refusal naming ``key=value`` without a driver or the package."""
    if nvml is None:
        from lem.measure.energy.nvml import INSTALL, load_pynvml

        try:
            nvml = load_pynvml()
        except ImportError:
            raise GpuControlRefused(f"{key}={show(value)}: needs NVML, and the 'pynvml' module is not installed ({INSTALL})") from None
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001
        raise GpuControlRefused(f"{key}={show(value)}: NVML did not start ({exc}): no NVIDIA driver or GPU on this machine") from None
    return nvml


def shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001
        pass


def show(value: Any) -> str:
    """A setting's value as the user wrote it (250, not 250.0)."""
    return "null" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
