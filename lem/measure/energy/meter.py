"""The energy meter: named, nestable windows over every available energy source.

    meter = EnergyMeter.for_devices([0], t0=clock.t0)  # NVML for CUDA device 0, RAPL, CodeCarbon
    meter.start()                                   # opens NVML / RAPL / CodeCarbon, starts the sampler
    meter.measure_idle()                            # idle power per device (idle_baseline_s)
    meter.begin_window("generation")
    ...                                             # the work
    window = meter.end_window("generation", synchronize=backend.synchronize)
    window.readings                                 # list[EnergyReading]: per device, with source, net of idle
    meter.stop()

Counters (NVML mJ, RAPL uJ, CodeCarbon's estimate) are read at both window boundaries; a background
thread (``sampler``) samples instant power and GPU telemetry every ``sample_interval_s`` for the
timeline, for GPUs without a counter (integrated), and as a cross-check beside the counter. Every
reading says its source and is None — never 0 — when nothing measured it. Windows nest freely: each keeps its own boundary readings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from lem.errors import LemError
from lem.measure.cuda import cuda_in_use
from lem.measure.energy import baseline
from lem.measure.energy.assemble import available_sources
from lem.measure.energy.baseline import IDLE_WINDOW
from lem.measure.energy.carbon import (
    intensity_setting,
)
from lem.measure.energy.sampler import PowerSample, PowerSampler, Snapshot
from lem.measure.energy.sources import Channel, Key, Source
from lem.measure.energy.window import (
    Window,
    setup_warnings,
    short_window_warnings,
    window_readings,
    window_warnings,
)
from lem.records import (
    EnergyMeterRecord,
    IdleBaselineRecord,
    IdlePower,
    PowerSamplesRecord,
)


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
        idle_settle_max_s: float = 0.0,
        pue: float = 1.0,
        carbon_intensity: Callable[[], tuple[float | None, str | None]] | None = None,
        cuda_device_indices: Sequence[int] = (),
        notes: Sequence[str] = (),
        cache_dir: str | Path | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._pending = list(sources)
        self.sampler = PowerSampler(sample_interval_s, clock)
        self.sources: list[Source] = self.sampler.sources  # those that opened (after start)
        self.channels: list[Channel] = self.sampler.channels  # every metered device/component, in order
        self._clock = clock
        self._sleep = sleep
        self.t0 = clock() if t0 is None else float(t0)
        self.idle_baseline_s = idle_baseline_s
        self.idle_baseline_cache_max_age_s = idle_baseline_cache_max_age_s
        self.idle_settle_max_s = idle_settle_max_s
        self.pue = pue
        self._intensity_fn = carbon_intensity
        self.carbon_intensity_g_per_kwh: float | None = None
        self.carbon_intensity_source: str | None = None
        self.cuda_device_indices = list(cuda_device_indices)
        self.notes: list[str] = list(notes)
        self.cache_dir = cache_dir
        self.baseline: IdleBaselineRecord | None = None
        self._idle: dict[Key, IdlePower] = {}
        self._open: dict[str, Snapshot] = {}
        self._windows: list[Window] = []
        self._warnings: list[str] = []
        self._started = False
        self._stopped = False
        # Windows whose length is checked against MIN_WINDOW_S (None: all); setup phases are short by nature.
        self.validity_windows: set[str] | None = None

    @property
    def sample_interval_s(self) -> float:
        return self.sampler.interval_s

    @sample_interval_s.setter
    def sample_interval_s(self, value: float) -> None:
        self.sampler.interval_s = float(value)

    # --- construction from plain settings -------------------------------------------------

    @classmethod
    def for_devices(
        cls,
        cuda: Sequence[int] | None = None,
        *,
        enabled: bool = True,
        nvml: bool = True,
        rapl: bool = True,
        codecarbon: bool = True,
        sample_interval_ms: float = 100.0,
        idle_baseline_s: float = 10.0,
        idle_baseline_cache_max_age_s: float = 0.0,
        idle_settle_max_s: float = 30.0,
        pue: float = 1.0,
        carbon_intensity_g_per_kwh: float | None = None,
        country_iso_code: str = "USA",
        region: str | None = None,
        measure_power_secs: float = 1.0,
        tracking_mode: str = "machine",
        cpu_tdp_w: float | None = None,
        ram_power_w: float | None = None,
        t0: float | None = None,
        output_dir: str | Path | None = None,
        rapl_root: str | Path | None = None,
        cache_dir: str | Path | None = None,
        host_meters: bool = True,
    ) -> EnergyMeter:
        """A meter over what exists: NVML for the given CUDA devices, RAPL, CodeCarbon for what has no sensor.

        Nothing is opened until ``start()``. ``cuda`` are the CUDA devices the engine uses
        (torch numbering); empty or None on a CPU run. ``enabled=False`` measures nothing (windows
        are still timed); ``nvml``/``rapl``/``codecarbon`` switch each source. CodeCarbon's
        estimate where no sensor exists and the grid carbon intensity take ``country_iso_code``,
        ``region``, ``measure_power_secs``, ``tracking_mode`` ("machine" | "process"),
        ``cpu_tdp_w`` and ``ram_power_w``; ``carbon_intensity_g_per_kwh`` overrides its grid figure.
        ``host_meters=False`` leaves the host-wide meters (RAPL, CodeCarbon) to another process of
        the same run on this host. The defaults are those of lem's ``energy`` settings.
        """
        indices = list(cuda or [])
        common: dict[str, Any] = dict(
            sample_interval_s=sample_interval_ms / 1000.0,
            t0=t0,
            idle_baseline_s=idle_baseline_s,
            idle_baseline_cache_max_age_s=idle_baseline_cache_max_age_s,
            idle_settle_max_s=idle_settle_max_s,
            pue=pue,
            cuda_device_indices=indices,
            cache_dir=cache_dir,
        )
        if not enabled:
            return cls([], notes=["energy measurement off (energy.enabled=false)"], **common)
        sources, notes = available_sources(
            indices, nvml=nvml, rapl=rapl, codecarbon=codecarbon, host_meters=host_meters, rapl_root=rapl_root,
            codecarbon_settings=dict(
                country_iso_code=country_iso_code, region=region, measure_power_secs=measure_power_secs,
                carbon_intensity_g_per_kwh=carbon_intensity_g_per_kwh, output_dir=output_dir, cpu_tdp_w=cpu_tdp_w,
                ram_power_w=ram_power_w, tracking_mode=tracking_mode,
            ),
        )
        intensity = intensity_setting(carbon_intensity_g_per_kwh, codecarbon, country_iso_code, region)
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
        self.sampler.open(self._pending, self.notes, self._warnings)
        self._started = True
        self.tick()  # the first row of every channel: counter deltas start here
        if background and self.sources:
            self.sampler.start_thread()
        return self

    def stop(self) -> None:
        """Stop the sampler and release the devices; closed windows and samples stay readable."""
        if not self._started or self._stopped:
            return
        self.sampler.stop_thread()
        if self._open:
            self._warn(f"energy window(s) never ended: {', '.join(self._open)}")
        self._ask_sources("config_changes")  # a power limit or clock setting changed mid-run (another tenant, an admin)
        self.sampler.close()
        self._stopped = True

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def now(self) -> float:
        """The meter's clock (``time.perf_counter`` unless a test gives another)."""
        return self._clock()

    def tick(self) -> None:
        """Take one sample of every source now (the background thread calls this every interval)."""
        self.sampler.tick()

    def pause(self, seconds: float, since: float | None = None) -> None:
        """Let ``seconds`` pass (from ``since``, a time of the meter's clock; default now) while power is sampled.

        Beside the background sampler this sleeps; without one (tests, manual use) it samples here.
        """
        if self.sampler.running:
            self._sleep(seconds)
            return
        since = self._clock() if since is None else since
        while self._clock() - since < seconds:
            self._sleep(min(self.sample_interval_s, seconds - (self._clock() - since)))
            self.tick()

    # --- windows ---------------------------------------------------------------------------

    def begin_window(self, name: str, *, also: Sequence[str] = ()) -> float:
        """Open a named window: read every counter now. Windows nest; names must be unique while open.

        ``also`` opens more windows at the very same reading (e.g. the whole run and its first phase).
        Returns the time of that reading on the meter's clock (not since ``t0``).
        """
        self._require_running()
        for n in (name, *also):
            if n in self._open:
                raise LemError(f"energy window {n!r} is already open; end it before beginning it again")
        snapshot = self.sampler.read(force_counters=True)
        for n in (name, *also):
            self._open[n] = snapshot
        return snapshot.t

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
        end = self.sampler.read(force_counters=True)
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
        begin_t = self.begin_window(name)
        placeholder = Window(name, begin_t - self.t0, begin_t - self.t0)
        yield placeholder
        done = self.end_window(name, synchronize)
        for f in fields(Window):
            setattr(placeholder, f.name, getattr(done, f.name))

    def _build_window(self, name: str, begin: Snapshot, end: Snapshot) -> Window:
        window = Window(name, begin.t - self.t0, end.t - self.t0, window_readings(self.sampler, begin, end, self._idle))
        if name != IDLE_WINDOW:
            window.warnings = window_warnings(window, self.channels)
            for w in window.warnings:
                self._warn(w)
        return window

    def _default_synchronize(self) -> None:
        try:
            cuda = cuda_in_use()  # never imports torch: only syncs what is already running
            if cuda is not None:
                for i in self.cuda_device_indices or range(cuda.device_count()):
                    cuda.synchronize(i)
        except Exception:
            pass

    # --- idle baseline ---------------------------------------------------------------------

    @property
    def measures_idle(self) -> bool:
        """Whether ``measure_idle()`` (with its defaults) will measure or reuse a baseline."""
        return self.idle_baseline_s > 0 and bool(self.channels)

    def measure_idle(
        self,
        seconds: float | None = None,
        *,
        cache_max_age_s: float | None = None,
        state: str = baseline.MODEL_LOADED,
        settle_max_s: float | None = None,
    ) -> IdleBaselineRecord | None:
        """Measure idle power per device for ``seconds`` (default ``idle_baseline_s``); 0 disables.

        Waits first (up to ``settle_max_s``, default ``idle_settle_max_s``) for measured power to be steady,
        so the baseline is of the ``state`` it names. Later windows report ``net_energy_j`` = gross − idle
        mean × duration ± its uncertainty. A cached baseline (same devices, state, driver, power limit)
        younger than the cache age limit is reused.
        """
        self._require_running()
        seconds = self.idle_baseline_s if seconds is None else seconds
        max_age = self.idle_baseline_cache_max_age_s if cache_max_age_s is None else cache_max_age_s
        settle_s = self.idle_settle_max_s if settle_max_s is None else settle_max_s
        if seconds <= 0 or not self.channels:
            return None
        record = baseline.measure(self, seconds, max_age, state=state, settle_max_s=settle_s)
        self.baseline = record
        self._idle = {(p.device, p.component): p for p in record.power}
        for w in baseline.noisy_warnings(record) + baseline.settle_warnings(record):
            self._warn(w)
        return record

    def recheck_idle(self, seconds: float, *, settle_max_s: float | None = None) -> IdleBaselineRecord | None:
        """Measure idle again (after generation, once power settles) and warn when it drifted from the baseline.

        The re-measurement is reported, never applied: every window stays net of the first baseline.
        """
        self._require_running()
        if seconds <= 0 or not self.channels or self.baseline is None:
            return None
        settle_s = self.idle_settle_max_s if settle_max_s is None else settle_max_s
        record = baseline.measure(self, seconds, 0.0, state=self.baseline.state, settle_max_s=settle_s, when="after_generation")
        for w in baseline.drift_warnings(baseline.drift(self.baseline.power, record.power)) + baseline.settle_warnings(record):
            self._warn(w)
        return record

    def verify_devices(self) -> list[str]:
        """Re-check each source's device mapping now that the engine is up (NVML vs torch's CUDA UUIDs)."""
        return self._ask_sources("verify_mapping")

    def _ask_sources(self, method: str) -> list[str]:
        """Warnings from every source offering ``method``; a failed call is itself one, never fatal."""
        out: list[str] = []
        for src in self.sources:
            if hasattr(src, method):
                try:
                    out += list(getattr(src, method)())
                except Exception as e:  # noqa: BLE001
                    out.append(f"{src.name}: {method} failed ({type(e).__name__}: {e})")
        for w in out:
            self._warn(w)
        return out

    # --- outputs ---------------------------------------------------------------------------

    def samples(self, t0: float | None = None) -> list[PowerSample]:
        """Every timeline row so far, times in seconds since ``t0`` (default: the meter's t0)."""
        return self.sampler.samples(self.t0 if t0 is None else t0)

    def sample_records(self, new_only: bool = True) -> list[PowerSamplesRecord]:
        """The timeline as one columnar record per device: rows not yet exported (or all of them)."""
        return self.sampler.sample_records(self.t0, new_only)

    def warnings(self) -> list[str]:
        """Why this run's energy figures may be weak, in sentences (also in ``record()``)."""
        checked = [w for w in self._windows if self.validity_windows is None or w.name in self.validity_windows]
        out = setup_warnings(self.channels, self.sources, self.notes, self.cuda_device_indices, self.sample_interval_s, self._started)
        out += short_window_warnings(checked)
        out.extend(w for w in self._warnings if w not in out)
        return out

    def record(self) -> EnergyMeterRecord:
        """What to write to the raw file once the run is over: sources, CO2 inputs, overhead, warnings."""
        cc = next((s for s in self.sources if s.name == "codecarbon"), None)
        return EnergyMeterRecord(
            channels=[c.describe() for c in self.channels],
            notes=list(self.notes) + sorted(self.sampler.errors),
            sample_interval_s=self.sample_interval_s,
            carbon_intensity_g_per_kwh=self.carbon_intensity_g_per_kwh,
            carbon_intensity_source=self.carbon_intensity_source,
            pue=self.pue,
            codecarbon=cc.describe() if cc is not None else None,
            sampler_cpu_s=self.sampler.cpu_s,
            sampler_wall_s=self.sampler.wall_s,
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
