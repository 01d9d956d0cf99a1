"""The energy meter: named, nestable windows over every available energy source.

    meter = EnergyMeter.from_config(cfg.energy, cuda_device_indices=[0], t0=clock.t0)
    meter.start()                                   # opens NVML / RAPL / CodeCarbon, starts the sampler
    meter.measure_idle()                            # idle power per device (energy.idle_baseline_s)
    meter.begin_window("generation")
    ...                                             # the work
    window = meter.end_window("generation", synchronize=backend.synchronize)
    window.readings                                 # list[EnergyReading]: per device, with source, net of idle
    meter.stop()

Counters (NVML mJ, RAPL uJ, CodeCarbon's accumulated estimate) are read at both window
boundaries; a background thread samples instant power and GPU telemetry every
``sample_interval_s`` for the timeline, for GPUs without a counter (integrated), and as a
cross-check beside the counter. Every reading says its source and is None — never 0 — when
nothing measured it. Windows nest freely: each keeps its own boundary readings.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lem.errors import LemError
from lem.measure.energy import baseline as baseline_cache
from lem.measure.energy.arithmetic import mean_std, net_of_idle, trapezoid_j
from lem.measure.energy.sources import Channel, Key, Sample, Source
from lem.records import (
    EnergyMeterRecord,
    EnergyReading,
    EnergyWindowRecord,
    IdleBaselineRecord,
    IdlePower,
    PhaseRecord,
    PowerSamplesRecord,
)

if TYPE_CHECKING:
    from lem.config import EnergyConfig

MIN_WINDOW_S = 5.0  # below this, counter resolution and boundary effects dominate
RECOMMENDED_WINDOW_S = 20.0
CROSS_CHECK_TOLERANCE = 0.05  # counter vs integrated instant power, windows >= MIN_WINDOW_S
PROCESS_CHECK_INTERVAL_S = 1.0  # how often the sampler lists the processes on each GPU
IDLE_NOISY_CV = 0.10  # idle power std / mean above this is flagged
IDLE_WINDOW = "idle_baseline"


@dataclass
class PowerSample:
    """One timeline row: a device's power (and GPU telemetry) at ``t_s``."""

    t_s: float
    device: str
    component: str
    power_w: float | None = None
    energy_j: float | None = None  # cumulative counter since the meter started (when read at this row)
    sm_util_pct: float | None = None
    mem_util_pct: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    temp_c: float | None = None
    throttle_reasons: int | None = None


_TELEMETRY = ("sm_util_pct", "mem_util_pct", "sm_clock_mhz", "mem_clock_mhz", "temp_c", "throttle_reasons")


@dataclass
class Window:
    """A closed window: times on the meter's clock (seconds since ``t0``) and one reading per channel."""

    name: str
    start_s: float
    end_s: float
    readings: list[EnergyReading] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def reading(self, device: str) -> EnergyReading | None:
        return next((r for r in self.readings if r.device == device), None)

    def phase_record(self) -> PhaseRecord:
        return PhaseRecord(name=self.name, start_s=self.start_s, end_s=self.end_s, energy=list(self.readings))

    def window_record(self) -> EnergyWindowRecord:
        return EnergyWindowRecord(name=self.name, start_s=self.start_s, end_s=self.end_s, energy=list(self.readings))


@dataclass
class _Snapshot:
    t: float  # perf_counter time of the reads (midpoint)
    energy: dict[Key, float | None]


class EnergyMeter:
    """Measures energy over named windows; usable without Hydra (see the module docstring)."""

    def __init__(
        self,
        sources: Sequence[Source] = (),
        *,
        sample_interval_s: float = 0.1,
        t0: float | None = None,
        idle_baseline_s: float = 0.0,
        idle_baseline_cache_max_age_s: float = 0.0,
        pue: float = 1.0,
        carbon_intensity: Callable[[], tuple[float | None, str | None]] | None = None,
        cuda_device_indices: Sequence[int] = (),
        notes: Sequence[str] = (),
        cache_dir: str | Path | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._pending = list(sources)
        self.sources: list[Source] = []
        self.channels: list[Channel] = []
        self.sample_interval_s = float(sample_interval_s)
        self._clock = clock
        self._sleep = sleep
        self.t0 = clock() if t0 is None else float(t0)
        self.idle_baseline_s = idle_baseline_s
        self.idle_baseline_cache_max_age_s = idle_baseline_cache_max_age_s
        self.pue = pue
        self._intensity_fn = carbon_intensity
        self.carbon_intensity_g_per_kwh: float | None = None
        self.carbon_intensity_source: str | None = None
        self.cuda_device_indices = list(cuda_device_indices)
        self.notes: list[str] = list(notes)
        self.cache_dir = cache_dir
        self.baseline: IdleBaselineRecord | None = None
        self._idle: dict[Key, IdlePower] = {}
        self._source_of: dict[Key, Source] = {}
        self._rows: dict[Key, list[PowerSample]] = {}
        self._exported: dict[Key, int] = {}
        self._last_delta: dict[Key, tuple[float, float]] = {}  # last (t, energy) a counter-delta power row started from
        self._last_counter_t: dict[int, float] = {}
        self._last_pid_t = float("-inf")
        self._pids: list[tuple[float, Key, tuple[int, ...]]] = []
        self._open: dict[str, _Snapshot] = {}
        self._windows: list[Window] = []
        self._warnings: list[str] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._stopped = False
        self._sampler_cpu_s: float | None = None
        self._sampler_wall_s: float | None = None
        self._errors: set[str] = set()
        # Windows whose length is checked against MIN_WINDOW_S (None: all); setup phases are short by nature.
        self.validity_windows: set[str] | None = None

    # --- construction from lem's config ---------------------------------------------------

    @classmethod
    def from_config(
        cls,
        cfg: EnergyConfig,
        cuda_device_indices: Sequence[int] | None = None,
        *,
        t0: float | None = None,
        output_dir: str | Path | None = None,
        rapl_root: str | Path | None = None,
        cache_dir: str | Path | None = None,
        host_meters: bool = True,
    ) -> EnergyMeter:
        """A meter over what exists: NVML for the given CUDA devices, RAPL, CodeCarbon for what has no sensor.

        Nothing is opened until ``start()``. ``cuda_device_indices`` are the CUDA devices the
        engine uses (torch numbering); empty or None on a CPU run. ``host_meters=False`` leaves
        the host-wide meters (RAPL, CodeCarbon) to another process of the same run on this host.
        """
        from lem.measure.energy.carbon import CodeCarbonSource, carbon_intensity
        from lem.measure.energy.nvml import NvmlSource
        from lem.measure.energy.rapl import DEFAULT_ROOT, RaplSource

        indices = list(cuda_device_indices or [])
        common: dict[str, Any] = dict(
            sample_interval_s=cfg.sample_interval_ms / 1000.0,
            t0=t0,
            idle_baseline_s=cfg.idle_baseline_s,
            idle_baseline_cache_max_age_s=cfg.idle_baseline_cache_max_age_s,
            pue=cfg.pue,
            cuda_device_indices=indices,
            cache_dir=cache_dir,
        )
        if not cfg.enabled:
            return cls([], notes=["energy measurement off (energy.enabled=false)"], **common)
        cc = cfg.codecarbon
        sources: list[Source] = []
        notes: list[str] = []
        if indices and cfg.nvml:
            sources.append(NvmlSource(indices))
        elif indices:
            notes.append("energy.nvml=false: GPU energy not measured")
        if not host_meters:
            notes.append("host meters (RAPL, CodeCarbon) read by another process of this run on this host")
        elif cfg.rapl:
            sources.append(RaplSource(rapl_root or DEFAULT_ROOT))
        else:
            notes.append("energy.rapl=false: RAPL not read")
        override = cfg.carbon_intensity_g_per_kwh
        if cc.enabled and host_meters:
            sources.append(
                CodeCarbonSource(
                    country_iso_code=cc.country_iso_code,
                    region=cc.region,
                    measure_power_secs=cc.measure_power_secs,
                    carbon_intensity_g_per_kwh=override,
                    output_dir=output_dir,
                    cpu_tdp_w=cc.cpu_tdp_w,
                    ram_power_w=cc.ram_power_w,
                    tracking_mode=cc.tracking_mode,
                )
            )
        elif not cc.enabled:
            notes.append("energy.codecarbon.enabled=false: no CPU/RAM estimate where no sensor exists")

        def intensity() -> tuple[float | None, str | None]:
            if override is not None:
                return float(override), "config: energy.carbon_intensity_g_per_kwh"
            if not cc.enabled:
                return None, None
            return carbon_intensity(cc.country_iso_code, cc.region)

        return cls(sources, carbon_intensity=intensity, notes=notes, **common)

    # --- life cycle ------------------------------------------------------------------------

    def start(self, background: bool = True) -> EnergyMeter:
        """Open the sources (those that fail become notes) and start the sampler thread."""
        if self._started:
            return self
        if self._intensity_fn is not None:
            try:
                self.carbon_intensity_g_per_kwh, self.carbon_intensity_source = self._intensity_fn()
            except Exception as e:
                self.notes.append(f"no carbon intensity from CodeCarbon ({e}); set energy.carbon_intensity_g_per_kwh")
        for src in self._pending:
            covered = {c.component for c in self.channels}
            if not src.restrict(covered):
                self.notes.append(f"{src.name}: not needed (cpu and dram already measured)")
                continue
            try:
                src.open()
            except Exception as e:
                self.notes.append(f"{src.name}: {e}")
                try:
                    src.close()
                except Exception:
                    pass
                continue
            self.sources.append(src)
            self.notes.extend(src.notes)
            self._warnings.extend(getattr(src, "warnings", []))
            for ch in src.channels:
                self.channels.append(ch)
                self._source_of[ch.key] = src
                self._rows[ch.key] = []
        self._started = True
        self.tick()  # the first row of every channel: counter deltas start here
        if background and self.sources:
            self._thread = threading.Thread(target=self._run, name="lem-energy-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the sampler and release the devices; closed windows and samples stay readable."""
        if not self._started or self._stopped:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._open:
            self._warn(f"energy window(s) never ended: {', '.join(self._open)}")
        for src in self.sources:
            try:
                src.close()
            except Exception:
                pass
        self._stopped = True

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- sampling --------------------------------------------------------------------------

    def tick(self) -> None:
        """Take one sample of every source now (the background thread calls this every interval)."""
        self._read(force_counters=False)

    def _run(self) -> None:
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        next_t = self._clock()
        while True:
            next_t += self.sample_interval_s
            delay = next_t - self._clock()
            if delay < 0:  # fell behind (a slow read or a stalled host): skip, don't burst
                next_t, delay = self._clock(), 0.0
            if self._stop.wait(delay):
                break
            self._read(force_counters=False)
        self._sampler_cpu_s = time.thread_time() - cpu0
        self._sampler_wall_s = time.perf_counter() - wall0

    def _read(self, force_counters: bool) -> _Snapshot:
        with self._lock:
            t_a = self._clock()
            energies: dict[Key, float | None] = {}
            samples: dict[Key, Sample] = {}
            pids: dict[Key, list[int]] = {}
            check_pids = force_counters or t_a - self._last_pid_t >= PROCESS_CHECK_INTERVAL_S
            for src in self.sources:
                try:
                    samples.update(src.sample())
                    last = self._last_counter_t.get(id(src))
                    if force_counters or last is None or t_a - last >= src.counter_interval_s * 0.999:
                        energies.update(src.read_energy_j())
                        self._last_counter_t[id(src)] = t_a
                    if check_pids:
                        pids.update(src.processes())
                except Exception as e:  # a transient driver error costs one sample, never the run
                    self._note_error(src, e)
            if check_pids:
                self._last_pid_t = t_a
            t = (t_a + self._clock()) / 2.0
            self._record(t, energies, samples, pids)
            return _Snapshot(t, energies)

    def _record(self, t: float, energies: dict[Key, float | None], samples: dict[Key, Sample], pids: dict[Key, list[int]]) -> None:
        for ch in self.channels:
            k = ch.key
            if k in pids:
                self._pids.append((t, k, tuple(pids[k])))
            e = energies.get(k)
            s = samples.get(k)
            if e is None and s is None:
                continue
            row = PowerSample(t, ch.device, ch.component, energy_j=e)
            if s is not None:
                row.power_w = s.power_w
                for name in _TELEMETRY:
                    setattr(row, name, getattr(s, name))
            elif e is not None and ch.power_kind is None:
                row.power_w = self._counter_power(k, t, e)
            self._rows[k].append(row)

    def _counter_power(self, k: Key, t: float, e: float) -> float | None:
        # Timeline power of a counter-only device (RAPL, estimates): the average since the previous
        # row, only over spans of at least half the nominal interval (a boundary read right after a
        # tick would give a jittery short-span figure; its energy joins the next span instead).
        prev = self._last_delta.get(k)
        nominal = max(self.sample_interval_s, self._source_of[k].counter_interval_s)
        if prev is None:
            self._last_delta[k] = (t, e)
            return None
        if t - prev[0] < 0.5 * nominal:
            return None
        self._last_delta[k] = (t, e)
        return (e - prev[1]) / (t - prev[0])

    # --- windows ---------------------------------------------------------------------------

    def begin_window(self, name: str, *, also: Sequence[str] = ()) -> None:
        """Open a named window: read every counter now. Windows nest; names must be unique while open.

        ``also`` opens more windows at the very same reading (e.g. the whole run and its first phase).
        """
        self._require_running()
        for n in (name, *also):
            if n in self._open:
                raise LemError(f"energy window {n!r} is already open; end it before beginning it again")
        snapshot = self._read(force_counters=True)
        for n in (name, *also):
            self._open[n] = snapshot

    def end_window(
        self,
        name: str,
        synchronize: Callable[[], Any] | None = None,
        *,
        begin_next: str | None = None,
        also_end: Sequence[str] = (),
    ) -> Window:
        """Close a window: synchronize the device first, read every counter, return its readings.

        ``synchronize`` defaults to ``torch.cuda.synchronize`` on the measured devices when torch
        has CUDA up. ``begin_next`` opens another window at the very same reading, so
        consecutive phases share a boundary and add up exactly. ``also_end`` closes more open
        windows at that reading; they are returned by :meth:`closed`.
        """
        self._require_running()
        for n in (name, *also_end):
            if n not in self._open:
                raise LemError(f"energy window {n!r} was never begun (open: {', '.join(self._open) or 'none'})")
        if begin_next is not None and begin_next in self._open and begin_next not in (name, *also_end):
            raise LemError(f"energy window {begin_next!r} is already open; end it before beginning it again")
        (synchronize or self._default_synchronize)()
        end = self._read(force_counters=True)
        windows = []
        for n in (name, *also_end):
            window = self._build_window(n, self._open.pop(n), end)
            if n != IDLE_WINDOW:
                self._windows.append(window)
            windows.append(window)
        if begin_next is not None:
            self._open[begin_next] = end
        return windows[0]

    def closed(self, name: str) -> Window | None:
        """The last closed window of that name, if any."""
        return next((w for w in reversed(self._windows) if w.name == name), None)

    @contextmanager
    def window(self, name: str, synchronize: Callable[[], Any] | None = None) -> Iterator[Window]:
        """``with meter.window("generation") as w: ...`` — ``w`` is filled when the block ends."""
        self.begin_window(name)
        placeholder = Window(name, self._open[name].t - self.t0, self._open[name].t - self.t0)
        yield placeholder
        done = self.end_window(name, synchronize)
        for f in fields(Window):
            setattr(placeholder, f.name, getattr(done, f.name))

    def _build_window(self, name: str, begin: _Snapshot, end: _Snapshot) -> Window:
        from lem.measure.energy.nvml import reason_names

        duration = end.t - begin.t
        readings = []
        for ch in self.channels:
            k = ch.key
            e0, e1 = begin.energy.get(k), end.energy.get(k)
            counter = e1 - e0 if e0 is not None and e1 is not None else None
            rows = [r for r in self._rows[k] if begin.t <= r.t_s <= end.t]
            sampled = n_samples = None
            if ch.power_kind is not None:
                power_rows = [r for r in rows if r.power_w is not None]
                n_samples = len(power_rows)
                sampled = trapezoid_j([r.t_s for r in power_rows], [r.power_w for r in power_rows], begin.t, end.t)
            if counter is not None:
                energy, source = counter, ch.counter_source
            elif sampled is not None:
                energy, source = sampled, "sampled"
            else:
                energy, source = None, None
            idle = self._idle.get(k)
            throttle = None
            if getattr(self._source_of[k], "has_telemetry", False):
                masks = [r.throttle_reasons for r in rows if r.throttle_reasons is not None]
                mask = 0
                for m in masks:
                    mask |= m
                throttle = reason_names(mask) if masks else None
            other = None
            if getattr(self._source_of[k], "has_telemetry", False):
                seen = {pid for t, key, ps in self._pids if key == k and begin.t <= t <= end.t for pid in ps}
                other = _other_pids(seen)
            readings.append(
                EnergyReading(
                    device=ch.device,
                    component=ch.component,
                    energy_j=energy,
                    source=source,  # type: ignore[arg-type]
                    net_energy_j=net_of_idle(energy, idle.mean_power_w if idle else None, duration),
                    idle_power_w=idle.mean_power_w if idle else None,
                    idle_power_std_w=idle.std_power_w if idle else None,
                    sampled_energy_j=sampled,
                    n_samples=n_samples,
                    throttle_reasons=throttle,
                    other_pids=other,
                )
            )
        window = Window(name, begin.t - self.t0, end.t - self.t0, readings)
        if name != IDLE_WINDOW:
            window.warnings = self._window_warnings(window)
            for w in window.warnings:
                self._warn(w)
        return window

    def _window_warnings(self, window: Window) -> list[str]:
        from lem.records import THROTTLING

        out = []
        for r in window.readings:
            throttled = [x for x in r.throttle_reasons or [] if x in THROTTLING]
            if throttled:
                out.append(
                    f"{window.name}: {r.device} throttled ({', '.join(throttled)}): clocks were lowered, "
                    "so its energy and speed are not those of an unthrottled GPU"
                )
            if r.other_pids:
                out.append(
                    f"{window.name}: other processes on {r.device} (pid {', '.join(map(str, r.other_pids))}): "
                    "its energy includes their work"
                )
            ch = next(c for c in self.channels if c.key == (r.device, r.component))
            if (
                r.source == "counter"
                and ch.power_kind == "instant"
                and r.energy_j
                and r.sampled_energy_j
                and window.duration_s >= MIN_WINDOW_S
                and abs(r.sampled_energy_j / r.energy_j - 1.0) > CROSS_CHECK_TOLERANCE
            ):
                out.append(
                    f"{window.name}: {r.device} energy counter {r.energy_j:.4g} J and integrated instant power "
                    f"{r.sampled_energy_j:.4g} J differ by {abs(r.sampled_energy_j / r.energy_j - 1.0):.1%}"
                )
        return out

    def _default_synchronize(self) -> None:
        torch = sys.modules.get("torch")  # never import torch here: only sync what is already running
        try:
            if torch is not None and torch.cuda.is_initialized():
                for i in self.cuda_device_indices or range(torch.cuda.device_count()):
                    torch.cuda.synchronize(i)
        except Exception:
            pass

    # --- idle baseline ---------------------------------------------------------------------

    def measure_idle(self, seconds: float | None = None, *, cache_max_age_s: float | None = None) -> IdleBaselineRecord | None:
        """Measure idle power per device for ``seconds`` (default ``energy.idle_baseline_s``); 0 disables.

        Every later window reports ``net_energy_j`` = gross − idle mean × duration. With a cache
        age limit > 0, a baseline of the same devices on this host younger than that is reused.
        """
        self._require_running()
        seconds = self.idle_baseline_s if seconds is None else seconds
        max_age = self.idle_baseline_cache_max_age_s if cache_max_age_s is None else cache_max_age_s
        if seconds <= 0 or not self.channels:
            return None
        fp = baseline_cache.fingerprint([{**c.describe(), "identity": c.identity} for c in self.channels])
        cached = baseline_cache.load(fp, max_age, time.time(), self.cache_dir)
        if cached is not None:
            self._set_baseline(cached)
            return cached
        self.begin_window(IDLE_WINDOW)
        begin_t = self._open[IDLE_WINDOW].t
        if self._thread is not None:
            self._sleep(seconds)
        else:  # no background sampler (tests, manual use): sample here
            while self._clock() - begin_t < seconds:
                self._sleep(min(self.sample_interval_s, seconds - (self._clock() - begin_t)))
                self.tick()
        window = self.end_window(IDLE_WINDOW, synchronize=lambda: None)
        power = []
        for ch, r in zip(self.channels, window.readings, strict=True):
            if r.energy_j is None or window.duration_s <= 0:
                continue
            readings = [
                row.power_w
                for row in self._rows[ch.key]
                if row.power_w is not None and begin_t <= row.t_s <= begin_t + window.duration_s
            ]
            _, std = mean_std(readings)
            power.append(
                IdlePower(ch.device, ch.component, r.energy_j / window.duration_s, std, len(readings), r.source)  # type: ignore[arg-type]
            )
        record = IdleBaselineRecord(
            duration_s=window.duration_s,
            measured_unix_s=time.time(),
            cached=False,
            power=power,
            start_s=window.start_s,
            end_s=window.end_s,
        )
        if max_age > 0:
            baseline_cache.save(fp, record, self.cache_dir)
        self._set_baseline(record)
        return record

    def _set_baseline(self, record: IdleBaselineRecord) -> None:
        self.baseline = record
        self._idle = {(p.device, p.component): p for p in record.power}
        for p in record.power:
            if p.std_power_w is not None and p.mean_power_w > 0 and p.std_power_w / p.mean_power_w > IDLE_NOISY_CV:
                self._warn(
                    f"idle baseline of {p.device} is noisy: {p.mean_power_w:.3g} ± {p.std_power_w:.2g} W "
                    f"(n={p.n_samples}); net-of-idle figures inherit that spread"
                )

    # --- outputs ---------------------------------------------------------------------------

    def samples(self, t0: float | None = None) -> list[PowerSample]:
        """Every timeline row so far, times in seconds since ``t0`` (default: the meter's t0)."""
        ref = self.t0 if t0 is None else t0
        with self._lock:
            rows = [r for ch in self.channels for r in self._rows[ch.key]]
        out = [PowerSample(**{**vars(r), "t_s": r.t_s - ref}) for r in rows]
        return sorted(out, key=lambda r: (r.t_s, r.device))

    def sample_records(self, new_only: bool = True) -> list[PowerSamplesRecord]:
        """The timeline as one columnar record per device: rows not yet exported (or all of them)."""
        out = []
        with self._lock:
            for ch in self.channels:
                k = ch.key
                start = self._exported.get(k, 0) if new_only else 0
                rows = self._rows[k][start:]
                self._exported[k] = len(self._rows[k])
                if not rows:
                    continue
                telemetry = getattr(self._source_of[k], "has_telemetry", False)
                rec = PowerSamplesRecord(
                    device=ch.device,
                    component=ch.component,
                    power_kind=ch.power_kind or "counter_delta",
                    source=ch.counter_source,  # type: ignore[arg-type]
                    t_s=[r.t_s - self.t0 for r in rows],
                    power_w=[r.power_w for r in rows],
                    energy_j=[r.energy_j for r in rows],
                )
                if telemetry:
                    for name in _TELEMETRY:
                        setattr(rec, name, [getattr(r, name) for r in rows])
                out.append(rec)
        return out

    def warnings(self) -> list[str]:
        """Why this run's energy figures may be weak, in sentences (also in ``record()``)."""
        out: list[str] = []
        delegated = any(n.startswith("host meters") for n in self.notes)
        if self._started and not self.channels and not (delegated and not self.cuda_device_indices):
            out.append("no energy source available: every energy figure is null (" + "; ".join(self.notes) + ")")
        estimated = [c for c in self.channels if c.counter_source == "estimated"]
        if estimated:
            cc = next((s for s in self.sources if s.name == "codecarbon"), None)
            info = cc.describe() if cc is not None else None
            detail = ""
            if info:
                detail = (
                    f" (CodeCarbon {info.get('version')}: CPU {info.get('cpu_model')!r}, TDP {info.get('cpu_tdp_w')} W from "
                    f"{info.get('tdp_basis')}; RAM {info.get('ram_power_w')} W)"
                )
            out.append(
                f"{' and '.join(c.device for c in estimated)} energy estimated from a model{detail}, not measured: "
                "no readable RAPL counter; reported apart from measured energy"
            )
        for c in self.channels:
            if c.counter_source is None and c.power_kind is not None:
                out.append(
                    f"{c.device} has no energy counter: its energy is integrated from {c.power_kind} power samples "
                    f"every {self.sample_interval_s * 1000:g} ms"
                )
        checked = [w for w in self._windows if self.validity_windows is None or w.name in self.validity_windows]
        short = [w for w in checked if w.duration_s < MIN_WINDOW_S]
        if short:
            out.append(
                f"window(s) shorter than {MIN_WINDOW_S:g} s, where counter resolution and boundary effects dominate "
                f"(aim for >= {RECOMMENDED_WINDOW_S:g} s): " + ", ".join(f"{w.name} {w.duration_s:.3g} s" for w in short)
            )
        out.extend(w for w in self._warnings if w not in out)
        return out

    def record(self) -> EnergyMeterRecord:
        """What to write to the raw file once the run is over: sources, CO2 inputs, overhead, warnings."""
        cc = next((s for s in self.sources if s.name == "codecarbon"), None)
        return EnergyMeterRecord(
            channels=[c.describe() for c in self.channels],
            notes=list(self.notes) + sorted(self._errors),
            sample_interval_s=self.sample_interval_s,
            carbon_intensity_g_per_kwh=self.carbon_intensity_g_per_kwh,
            carbon_intensity_source=self.carbon_intensity_source,
            pue=self.pue,
            codecarbon=cc.describe() if cc is not None else None,
            sampler_cpu_s=self._sampler_cpu_s,
            sampler_wall_s=self._sampler_wall_s,
            warnings=self.warnings(),
        )

    # --- helpers ---------------------------------------------------------------------------

    def _require_running(self) -> None:
        if not self._started:
            raise LemError("the energy meter is not started: call meter.start() first")
        if self._stopped:
            raise LemError("the energy meter is stopped: windows can no longer be measured")

    def _warn(self, text: str) -> None:
        if text not in self._warnings:
            self._warnings.append(text)

    def _note_error(self, src: Source, e: Exception) -> None:
        self._errors.add(f"{src.name}: read failed at least once ({type(e).__name__}: {e})")


def _other_pids(seen: set[int]) -> list[int]:
    """PIDs on a GPU that are not this process or its children.

    In a container, NVML reports host PIDs that never equal ours: when our PID is absent a
    single process is taken to be this one; two or more are all reported.
    """
    mine = {os.getpid()}
    try:
        import psutil

        mine |= {c.pid for c in psutil.Process().children(recursive=True)}
    except Exception:
        pass
    if seen & mine:
        return sorted(seen - mine)
    return sorted(seen) if len(seen) > 1 else []
