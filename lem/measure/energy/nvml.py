"""NVIDIA GPUs through NVML (``nvidia-ml-py``): energy counter, instant power, telemetry.

Energy: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded, Volta and
newer) read at window boundaries. Power for the timeline, the cross-check, and GPUs without
a counter: the ``NVML_FI_DEV_POWER_INSTANT`` field value where the driver has it; else
``nvmlDeviceGetPowerUsage``, which on Ampere and newer is a 1 s moving average.

Which NVML device meters which CUDA device is ``lem.measure.energy.gpu_mapping``; once CUDA is
up, ``NvmlSource.verify_mapping`` re-checks it against torch's device UUIDs. The GPU's
configuration (driver, power limits, clocks, P-state, MIG) is ``lem.measure.energy.gpu_config``.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from lem.measure.energy.gpu_config import (
    config_changes,
    dynamic_config,
    gpu_config,
    system_config,
)
from lem.measure.energy.gpu_mapping import (  # resolve_gpus is also imported from here (lem.launch.gpu_lease, tests)
    GpuTarget,
    as_text,
    mig_uuids,
    resolve_gpus,
    same_device,
    torch_cuda_uuids,
    uuid_matches,
)
from lem.measure.energy.sources import Channel, Key, Sample, Source

INSTALL = "pip install nvidia-ml-py"

# NVML clock-event ("throttle") reason bits -> names: every bit nvml.h defines (nvmlClocksEventReason*,
# nvmlClocksThrottleReason*; board limit and reliability as in nvidia-ml-py 13.615 and the current
# NVML API reference). Bits not listed here are reported in hex.
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
    0x200: "board_limit",
    0x400: "reliability",
}
# The reasons that mean the clocks were lowered under load by a power, thermal or board limit (not
# idle, not a clock setting someone chose, not sync boost following another GPU).
CLOCK_LOWERING_REASONS = frozenset(
    {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "board_limit", "reliability"}
)

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


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    @functools.wraps(method)
    def run(self: NvmlSource, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(_F, run)


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
        self._system: dict[str, Any] = {}
        self._pid_self = os.getpid()
        self._lock = threading.RLock()  # a remap (verify_mapping) never interleaves with the sampler's reads

    def open(self) -> None:
        nvml = load_pynvml()
        try:
            nvml.nvmlInit()
        except Exception as e:
            raise RuntimeError(f"NVML not available: nvmlInit failed ({e}); is the NVIDIA driver loaded?") from None
        self.nvml = nvml
        targets, self.warnings = resolve_gpus(nvml, self.cuda_indices, self.env, torch_cuda_uuids(self.cuda_indices))
        self._system = system_config(nvml)
        for t in targets:
            channel = Channel(f"cuda:{t.cuda_index}", "gpu", None)
            gpu = _Gpu(t, channel)
            self._attach(gpu)
            self._gpus.append(gpu)
            self.channels.append(channel)

    def _attach(self, gpu: _Gpu) -> None:
        """Point ``gpu.channel`` at ``gpu.target``: name, identity, configuration, counter, power reading."""
        nvml, t, channel = self.nvml, gpu.target, gpu.channel
        channel.name = as_text(nvml.nvmlDeviceGetName(t.handle))
        channel.identity = t.uuid
        channel.notes = [f"NVML {t.uuid} via {t.how}"]
        channel.config = gpu_config(nvml, t.handle, self._system)
        gpu.probes = {}
        try:
            gpu.counter0_mj = float(nvml.nvmlDeviceGetTotalEnergyConsumption(t.handle))
            channel.counter_source = "counter"
        except Exception:
            gpu.counter0_mj = None
            channel.counter_source = None
            channel.notes.append("no energy counter (pre-Volta or not supported): energy integrated from power samples")
        channel.power_kind = None
        if self._instant_power(t.handle) is not None:
            channel.power_kind = "instant"
        elif self._power_usage(t.handle) is not None:
            channel.power_kind = "power_usage"
            channel.notes.append("no instant power field: timeline from nvmlDeviceGetPowerUsage (a 1 s average on Ampere and newer)")
        if channel.counter_source is None and channel.power_kind is None:
            channel.notes.append("neither energy counter nor power reading: energy not measured")

    @_locked
    def verify_mapping(self, torch_uuids: Mapping[int, str] | None = None) -> list[str]:
        """Re-check, once CUDA is initialised, that each channel reads the GPU torch calls that CUDA index.

        ``torch_uuids``: CUDA index -> UUID (from torch when None). A channel on the wrong GPU is
        remapped to the one NVML lists under torch's UUID (same key; its cumulative energy
        continues from the same value). Returns a warning per mismatch; [] when consistent or
        when CUDA is not initialised. Safe while the sampler reads: reads and remaps share a lock.
        """
        if self.nvml is None:
            return []
        uuids = torch_cuda_uuids(self.cuda_indices) if torch_uuids is None else dict(torch_uuids)
        warnings: list[str] = []
        wrong: list[tuple[_Gpu, str, GpuTarget | None]] = []  # (channel, torch's UUID, NVML's device for it)
        for gpu in self._gpus:
            torch_uuid = uuids.get(gpu.target.cuda_index)
            if torch_uuid and not same_device(gpu.target, torch_uuid):
                wrong.append((gpu, torch_uuid, self._find_uuid(torch_uuid)))
        # The physical GPU each channel ends on; a move onto a GPU another channel ends on too is not made.
        final = {id(g): g.target.uuid for g in self._gpus} | {id(g): f.uuid for g, _, f in wrong if f is not None}
        while True:
            ends = list(final.values())
            clash = [g for g, _, _ in wrong if final[id(g)] != g.target.uuid and ends.count(final[id(g)]) > 1]
            if not clash:
                break
            final.update({id(g): g.target.uuid for g in clash})
        for gpu, torch_uuid, found in wrong:
            t = gpu.target
            metered, index = t.mig_uuid or t.uuid, t.cuda_index
            if found is None:
                warnings.append(
                    f"cuda:{index} is metered on NVML {metered} but torch reports UUID {torch_uuid}, which NVML does not "
                    "list: its energy may come from a GPU that did not run the work"
                )
            elif final[id(gpu)] != found.uuid:
                warnings.append(
                    f"cuda:{index} is metered on NVML {metered} but torch reports UUID {torch_uuid} ({found.uuid}), which "
                    "another channel also meters: not remapped, so that GPU's energy is not counted twice"
                )
            else:
                self._remap(gpu, GpuTarget(index, found.handle, found.uuid, found.mig_uuid, how="torch device UUID, re-verified after CUDA initialised"))
                warnings.append(
                    f"cuda:{index} was metered on NVML {metered} but torch reports UUID {torch_uuid}: remapped to "
                    f"{found.mig_uuid or found.uuid} ({gpu.channel.name}); windows closed before this check were metered on "
                    "the wrong GPU"
                )
        return warnings

    def _find_uuid(self, torch_uuid: str) -> GpuTarget | None:
        nvml = self.nvml
        for i in range(int(nvml.nvmlDeviceGetCount())):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = as_text(nvml.nvmlDeviceGetUUID(h))
            if uuid_matches(uuid, torch_uuid):
                return GpuTarget(-1, h, uuid)
            for mig_uuid in mig_uuids(nvml, h):
                if uuid_matches(mig_uuid, torch_uuid):
                    return GpuTarget(-1, h, uuid, mig_uuid=mig_uuid)
        return None

    def _remap(self, gpu: _Gpu, target: GpuTarget) -> None:
        # Keep the channel's cumulative energy continuous: the new GPU's counter starts where the old one's reading is.
        so_far_j = self.read_energy_j().get(gpu.channel.key)
        old = gpu.target
        gpu.target = target
        self._attach(gpu)
        if gpu.counter0_mj is not None and so_far_j is not None:
            gpu.counter0_mj -= so_far_j * 1000.0
        gpu.channel.notes.append(f"remapped from {old.mig_uuid or old.uuid} once CUDA was initialised: windows closed before were metered on that GPU")

    def config_changes(self) -> list[str]:
        """Re-read each GPU's power limit, clocks and modes: a sentence for each setting changed since ``open``."""
        if self.nvml is None:
            return []
        return [w for gpu in self._gpus for w in config_changes(gpu.channel.device, gpu.channel.config, dynamic_config(self.nvml, gpu.target.handle))]

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

    @_locked
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

    @_locked
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

    @_locked
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
