"""NVIDIA GPUs through NVML (``nvidia-ml-py``): energy counter, instant power, telemetry.

Energy: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded, Volta and
newer) read at window boundaries. Power for the timeline, the cross-check, and GPUs without
a counter: the ``NVML_FI_DEV_POWER_INSTANT`` field value where the driver has it; else
``nvmlDeviceGetPowerUsage``, which on Ampere and newer is a 1 s moving average.

CUDA device indices are not NVML indices: CUDA renumbers the devices listed in
``CUDA_VISIBLE_DEVICES`` (indices, ``GPU-`` UUID prefixes or ``MIG-`` ids) from 0, and
orders them fastest-first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, while NVML counts every
GPU in PCI order. When torch has CUDA up, its device UUID decides; otherwise the variable is
parsed the way the CUDA driver does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lem.errors import LemError
from lem.measure.cuda import cuda_in_use
from lem.measure.energy.sources import Channel, Key, Sample, Source

INSTALL = "pip install nvidia-ml-py"

# NVML clock-event ("throttle") reason bits -> names; the ones that mean lowered clocks under load.
THROTTLE_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

_VALUE_FIELDS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def reason_names(mask: int | None) -> list[str]:
    if not mask:
        return []
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    return names + ([f"0x{unknown:x}"] if unknown else [])


def load_pynvml() -> Any:
    """The ``pynvml`` module (from nvidia-ml-py), imported only when GPUs are measured."""
    try:
        import pynvml
    except ImportError:
        raise ImportError(f"NVML not available: the 'pynvml' module is not installed ({INSTALL})") from None
    return pynvml


@dataclass
class GpuTarget:
    """One CUDA device resolved to the NVML handle that meters it."""

    cuda_index: int
    handle: Any  # the physical GPU (the parent of a MIG instance)
    uuid: str  # the physical GPU's UUID
    mig_uuid: str | None = None  # set when the CUDA device is a MIG instance
    how: str = ""  # how the mapping was made, for the record


def parse_visible_devices(value: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as tokens; None when unset (all devices visible)."""
    if value is None:
        return None
    return [tok.strip() for tok in value.split(",")]


def resolve_gpus(
    nvml: Any, cuda_indices: Sequence[int], env: Mapping[str, str] | None = None, torch_uuids: Mapping[int, str] | None = None
) -> tuple[list[GpuTarget], list[str]]:
    """Map CUDA device indices to NVML handles; return the targets and warnings.

    ``torch_uuids`` (CUDA index -> UUID without the ``GPU-`` prefix, from torch when CUDA is
    initialised) wins when NVML knows the UUID; otherwise ``CUDA_VISIBLE_DEVICES`` is parsed
    like the CUDA driver does: entries up to the first invalid one, indices into NVML's list,
    UUIDs matched by unique prefix, ``MIG-`` ids resolved to their parent GPU.
    """
    env = os.environ if env is None else env
    warnings: list[str] = []
    count = int(nvml.nvmlDeviceGetCount())
    physical = []
    for i in range(count):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        physical.append((i, h, _text(nvml.nvmlDeviceGetUUID(h))))

    tokens = parse_visible_devices(env.get("CUDA_VISIBLE_DEVICES"))
    visible: list[GpuTarget] = []
    if tokens is None:
        visible = [GpuTarget(i, h, uuid, how=f"NVML index {i} (CUDA_VISIBLE_DEVICES unset)") for i, h, uuid in physical]
    else:
        used: set[str] = set()
        for tok in tokens:
            target = _resolve_token(nvml, tok, physical)
            if target is None or (target.mig_uuid or target.uuid) in used:
                break  # CUDA ignores this entry and every one after it
            used.add(target.mig_uuid or target.uuid)
            target.cuda_index = len(visible)
            visible.append(target)
    order = env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    names = {_text(nvml.nvmlDeviceGetName(h)) for _, h, _ in physical}
    if order != "PCI_BUS_ID" and len(names) > 1 and (tokens is None or any(t.strip().isdigit() for t in tokens)):
        warnings.append(
            "GPUs of different models and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA's fastest-first numbering may "
            "differ from NVML's; set CUDA_DEVICE_ORDER=PCI_BUS_ID so energy is read from the GPU that ran the work"
        )

    targets: list[GpuTarget] = []
    for index in cuda_indices:
        uuid = (torch_uuids or {}).get(index)
        by_uuid = next(((h, u) for _, h, u in physical if uuid and u.lower() == f"gpu-{uuid}".lower()), None)
        if by_uuid is not None:
            targets.append(GpuTarget(index, by_uuid[0], by_uuid[1], how="torch device UUID"))
            continue
        if not 0 <= index < len(visible):
            shown = env.get("CUDA_VISIBLE_DEVICES")
            raise LemError(
                f"CUDA device {index} has no NVML device: CUDA_VISIBLE_DEVICES={shown if shown is not None else '(unset)'} "
                f"makes {len(visible)} device(s) visible out of {count}"
            )
        t = visible[index]
        targets.append(GpuTarget(index, t.handle, t.uuid, t.mig_uuid, t.how))
    seen: dict[str, int] = {}
    for t in targets:
        if t.uuid in seen:
            warnings.append(f"cuda:{seen[t.uuid]} and cuda:{t.cuda_index} are on the same physical GPU {t.uuid}: its energy is counted once, under cuda:{seen[t.uuid]}")
        seen.setdefault(t.uuid, t.cuda_index)
    unique = [t for t in targets if seen[t.uuid] == t.cuda_index]
    for t in unique:
        if t.mig_uuid:
            warnings.append(
                f"cuda:{t.cuda_index} is MIG instance {t.mig_uuid}: NVML meters only the whole GPU {t.uuid}, so its "
                "energy includes every other instance on that GPU"
            )
    return unique, warnings


def _resolve_token(nvml: Any, tok: str, physical: list[tuple[int, Any, str]]) -> GpuTarget | None:
    if tok.isdigit():
        i = int(tok)
        if i >= len(physical):
            return None
        _, h, uuid = physical[i]
        return GpuTarget(-1, h, uuid, how=f"NVML index {i} (CUDA_VISIBLE_DEVICES={tok})")
    low = tok.lower()
    if low.startswith("mig-gpu-"):  # legacy MIG-GPU-<uuid>/<gi>/<ci>
        parent = _by_prefix(physical, tok[4:].split("/")[0])
        return None if parent is None else GpuTarget(-1, parent[1], parent[2], mig_uuid=tok, how="legacy MIG id")
    if low.startswith("mig-"):
        for _, h, uuid in physical:
            for mig_uuid in _mig_uuids(nvml, h):
                if mig_uuid.lower().startswith(low):
                    return GpuTarget(-1, h, uuid, mig_uuid=mig_uuid, how=f"MIG id {tok}")
        return None
    prefix = tok if low.startswith("gpu-") else f"GPU-{tok}"
    found = _by_prefix(physical, prefix)
    return None if found is None else GpuTarget(-1, found[1], found[2], how=f"UUID {tok}")


def _by_prefix(physical: list[tuple[int, Any, str]], prefix: str) -> tuple[int, Any, str] | None:
    matches = [p for p in physical if p[2].lower().startswith(prefix.lower())]
    return matches[0] if len(matches) == 1 else None  # an ambiguous prefix is invalid for CUDA too


def _mig_uuids(nvml: Any, handle: Any) -> list[str]:
    try:
        n = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
    except Exception:
        return []
    out = []
    for j in range(n):
        try:
            out.append(_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j))))
        except Exception:  # an empty MIG slot
            continue
    return out


def torch_cuda_uuids(indices: Sequence[int]) -> dict[int, str]:
    """UUIDs of CUDA devices from torch, only when torch is imported and CUDA already initialised."""
    out: dict[int, str] = {}
    try:
        cuda = cuda_in_use()
        if cuda is None:
            return out
        for i in indices:
            uuid = getattr(cuda.get_device_properties(i), "uuid", None)
            if uuid is not None:
                out[i] = str(uuid)
    except Exception:
        return {}
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Gpu:
    def __init__(self, target: GpuTarget, channel: Channel) -> None:
        self.target = target
        self.channel = channel
        self.counter0_mj: float | None = None
        self.probes: dict[str, bool] = {}  # telemetry call -> still worth calling


class NvmlSource(Source):
    name = "nvml"
    has_telemetry = True

    def __init__(self, cuda_indices: Sequence[int], env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.cuda_indices = list(cuda_indices)
        self.env = env
        self.warnings: list[str] = []
        self.nvml: Any = None
        self._gpus: list[_Gpu] = []
        self._pid_self = os.getpid()

    def open(self) -> None:
        nvml = load_pynvml()
        try:
            nvml.nvmlInit()
        except Exception as e:
            raise RuntimeError(f"NVML not available: nvmlInit failed ({e}); is the NVIDIA driver loaded?") from None
        self.nvml = nvml
        targets, self.warnings = resolve_gpus(nvml, self.cuda_indices, self.env, torch_cuda_uuids(self.cuda_indices))
        for t in targets:
            name = _text(nvml.nvmlDeviceGetName(t.handle))
            channel = Channel(f"cuda:{t.cuda_index}", "gpu", None, name=name, identity=t.uuid, notes=[f"NVML {t.uuid} via {t.how}"])
            gpu = _Gpu(t, channel)
            try:
                gpu.counter0_mj = float(nvml.nvmlDeviceGetTotalEnergyConsumption(t.handle))
                channel.counter_source = "counter"
            except Exception:
                channel.notes.append("no energy counter (pre-Volta or not supported): energy integrated from power samples")
            if self._instant_power(t.handle) is not None:
                channel.power_kind = "instant"
            elif self._power_usage(t.handle) is not None:
                channel.power_kind = "power_usage"
                channel.notes.append("no instant power field: timeline from nvmlDeviceGetPowerUsage (a 1 s average on Ampere and newer)")
            if channel.counter_source is None and channel.power_kind is None:
                channel.notes.append("neither energy counter nor power reading: energy not measured")
            self._gpus.append(gpu)
            self.channels.append(channel)

    def _instant_power(self, handle: Any) -> float | None:
        field_id = getattr(self.nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if field_id is None:
            return None
        try:
            value = self.nvml.nvmlDeviceGetFieldValues(handle, [field_id])[0]
            if int(value.nvmlReturn) != 0:
                return None
            raw = getattr(value.value, _VALUE_FIELDS.get(int(value.valueType), "uiVal"))
            return float(raw) / 1000.0  # mW
        except Exception:
            return None

    def _power_usage(self, handle: Any) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0  # mW
        except Exception:
            return None

    def read_energy_j(self) -> dict[Key, float | None]:
        out: dict[Key, float | None] = {}
        for gpu in self._gpus:
            if gpu.counter0_mj is None:
                continue
            try:
                out[gpu.channel.key] = (float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.target.handle)) - gpu.counter0_mj) / 1000.0
            except Exception:
                out[gpu.channel.key] = None
        return out

    def sample(self) -> dict[Key, Sample]:
        nvml = self.nvml
        out: dict[Key, Sample] = {}
        for gpu in self._gpus:
            h = gpu.target.handle
            kind = gpu.channel.power_kind
            s = Sample(power_w=self._instant_power(h) if kind == "instant" else self._power_usage(h) if kind == "power_usage" else None)
            util = self._probe(gpu, "util", lambda: nvml.nvmlDeviceGetUtilizationRates(h))
            if util is not None:
                s.sm_util_pct, s.mem_util_pct = float(util.gpu), float(util.memory)
            s.sm_clock_mhz = self._probe(gpu, "sm_clock", lambda: float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)))
            s.mem_clock_mhz = self._probe(gpu, "mem_clock", lambda: float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)))
            s.temp_c = self._probe(gpu, "temp", lambda: float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)))
            s.throttle_reasons = self._probe(gpu, "throttle", lambda: int(_reasons_fn(nvml)(h)))
            out[gpu.channel.key] = s
        return out

    def _probe(self, gpu: _Gpu, name: str, fn: Any) -> Any:
        if not gpu.probes.get(name, True):
            return None
        try:
            return fn()
        except Exception:
            gpu.probes[name] = False  # not supported on this GPU/driver: stop asking
            return None

    def processes(self) -> dict[Key, list[int]]:
        out: dict[Key, list[int]] = {}
        for gpu in self._gpus:
            pids: set[int] = set()
            for fn_name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                fn = getattr(self.nvml, fn_name, None)
                if fn is None or not gpu.probes.get(fn_name, True):
                    continue
                try:
                    pids.update(int(p.pid) for p in fn(gpu.target.handle))
                except Exception:
                    gpu.probes[fn_name] = False
            out[gpu.channel.key] = sorted(pids)
        return out

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
            self.nvml = None


def _reasons_fn(nvml: Any) -> Any:
    fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    return fn if fn is not None else nvml.nvmlDeviceGetCurrentClocksThrottleReasons
