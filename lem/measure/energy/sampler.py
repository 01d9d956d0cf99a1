"""The power sampler: opens the energy sources, reads them on a background thread, keeps the timeline.

Every ``interval_s`` one read of every source: its cumulative counters (at most every
``counter_interval_s`` of that source; all sources' counters first, back to back), then
instant power and GPU telemetry where a source has them, and every second the processes on
each GPU. Window boundaries force a read of every counter (``read(force_counters=True)``).
The rows feed the timeline, the integrated (sampled) energy of devices without a counter,
and the cross-check beside a counter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lem.measure.energy.sources import Channel, Key, Sample, Source
from lem.records import PowerSamplesRecord

PROCESS_CHECK_INTERVAL_S = 1.0  # how often the sampler lists the processes on each GPU


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


TELEMETRY = ("sm_util_pct", "mem_util_pct", "sm_clock_mhz", "mem_clock_mhz", "temp_c", "throttle_reasons")


@dataclass
class Snapshot:
    """The counters read together at one instant (a window boundary or a tick)."""

    t: float  # clock time of the reads (midpoint)
    energy: dict[Key, float | None]


class PowerSampler:
    """The opened sources and their channels, read together under one lock; the rows of every channel."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.interval_s = float(interval_s)
        self._clock = clock
        self.sources: list[Source] = []
        self.channels: list[Channel] = []
        self.source_of: dict[Key, Source] = {}
        self.errors: set[str] = set()
        self.cpu_s: float | None = None  # the background thread's CPU and wall time, once stopped
        self.wall_s: float | None = None
        self._rows: dict[Key, list[PowerSample]] = {}
        self._exported: dict[Key, int] = {}
        self._last_delta: dict[Key, tuple[float, float]] = {}  # last (t, energy) a counter-delta power row started from
        self._last_counter_t: dict[int, float] = {}
        self._last_pid_t = float("-inf")
        self._pids: list[tuple[float, Key, tuple[int, ...]]] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------------

    def open(self, pending: Sequence[Source], notes: list[str], warnings: list[str]) -> None:
        """Open the sources in order (those that fail, or are not needed, become ``notes``)."""
        for src in pending:
            covered = {c.component for c in self.channels}
            if not src.restrict(covered):
                notes.append(f"{src.name}: not needed (cpu and dram already measured)")
                continue
            try:
                src.open()
            except Exception as e:
                notes.append(f"{src.name}: {e}")
                try:
                    src.close()
                except Exception:
                    pass
                continue
            self.sources.append(src)
            notes.extend(src.notes)
            warnings.extend(getattr(src, "warnings", []))
            for ch in src.channels:
                self.channels.append(ch)
                self.source_of[ch.key] = src
                self._rows[ch.key] = []

    def start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lem-energy-sampler", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the background thread samples (else whoever measures calls ``tick``)."""
        return self._thread is not None

    def stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        for src in self.sources:
            try:
                src.close()
            except Exception:
                pass

    # --- reading ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Take one sample of every source now (the background thread calls this every interval)."""
        self.read(force_counters=False)

    def _run(self) -> None:
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        next_t = self._clock()
        while True:
            next_t += self.interval_s
            delay = next_t - self._clock()
            if delay < 0:  # fell behind (a slow read or a stalled host): skip, don't burst
                next_t, delay = self._clock(), 0.0
            if self._stop.wait(delay):
                break
            self.read(force_counters=False)
        self.cpu_s = time.thread_time() - cpu0
        self.wall_s = time.perf_counter() - wall0

    def read(self, force_counters: bool) -> Snapshot:
        """One read of every source; ``force_counters`` reads every counter and process list (a boundary).

        The counters of every source are read first, back to back, and the snapshot is stamped
        with the midpoint of those reads; instant power, telemetry and process lists follow (a
        few milliseconds later, stamped with the same time).
        """
        with self._lock:
            t_a = self._clock()
            energies: dict[Key, float | None] = {}
            samples: dict[Key, Sample] = {}
            pids: dict[Key, list[int]] = {}
            check_pids = force_counters or t_a - self._last_pid_t >= PROCESS_CHECK_INTERVAL_S
            due = [src for src in self.sources if force_counters or self._counter_due(src, t_a)]
            for src in due:
                try:
                    energies.update(src.read_energy_j())
                    self._last_counter_t[id(src)] = t_a
                except Exception as e:  # a transient driver error costs one sample, never the run
                    self._failed(src, e)
            t_b = self._clock()
            for src in self.sources:
                try:
                    samples.update(src.sample())
                    if check_pids:
                        pids.update(src.processes())
                except Exception as e:
                    self._failed(src, e)
            if check_pids:
                self._last_pid_t = t_a
            t = (t_a + t_b) / 2.0 if due else (t_a + self._clock()) / 2.0
            self._record(t, energies, samples, pids)
            return Snapshot(t, energies)

    def _counter_due(self, src: Source, t: float) -> bool:
        last = self._last_counter_t.get(id(src))
        return last is None or t - last >= src.counter_interval_s * 0.999

    def _failed(self, src: Source, e: Exception) -> None:
        self.errors.add(f"{src.name}: read failed at least once ({type(e).__name__}: {e})")

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
                for name in TELEMETRY:
                    setattr(row, name, getattr(s, name))
            elif e is not None and ch.power_kind is None:
                row.power_w = self._counter_power(k, t, e)
            self._rows[k].append(row)

    def _counter_power(self, k: Key, t: float, e: float) -> float | None:
        # Timeline power of a counter-only device (RAPL, estimates): the average since the previous
        # row, only over spans of at least half the nominal interval (a boundary read right after a
        # tick would give a jittery short-span figure; its energy joins the next span instead).
        prev = self._last_delta.get(k)
        nominal = max(self.interval_s, self.source_of[k].counter_interval_s)
        if prev is None:
            self._last_delta[k] = (t, e)
            return None
        if t - prev[0] < 0.5 * nominal:
            return None
        self._last_delta[k] = (t, e)
        return (e - prev[1]) / (t - prev[0])

    # --- what was read ---------------------------------------------------------------------

    def rows(self, key: Key, start: float, end: float) -> list[PowerSample]:
        """The rows of one channel with ``start <= t <= end`` (clock times)."""
        return [r for r in self._rows[key] if start <= r.t_s <= end]

    def pids_seen(self, key: Key, start: float, end: float) -> set[int]:
        """Every PID listed on that channel's device with ``start <= t <= end``."""
        return {pid for t, k, ps in self._pids if k == key and start <= t <= end for pid in ps}

    def samples(self, ref: float) -> list[PowerSample]:
        """Every timeline row so far, times in seconds since ``ref``, sorted by time then device."""
        with self._lock:
            rows = [r for ch in self.channels for r in self._rows[ch.key]]
        out = [PowerSample(**{**vars(r), "t_s": r.t_s - ref}) for r in rows]
        return sorted(out, key=lambda r: (r.t_s, r.device))

    def sample_records(self, ref: float, new_only: bool = True) -> list[PowerSamplesRecord]:
        """The timeline as one columnar record per device (times since ``ref``): rows not yet exported (or all)."""
        out = []
        with self._lock:
            for ch in self.channels:
                k = ch.key
                start = self._exported.get(k, 0) if new_only else 0
                rows = self._rows[k][start:]
                self._exported[k] = len(self._rows[k])
                if not rows:
                    continue
                telemetry = getattr(self.source_of[k], "has_telemetry", False)
                rec = PowerSamplesRecord(
                    device=ch.device,
                    component=ch.component,
                    power_kind=ch.power_kind or "counter_delta",
                    source=ch.counter_source,  # type: ignore[arg-type]
                    t_s=[r.t_s - ref for r in rows],
                    power_w=[r.power_w for r in rows],
                    energy_j=[r.energy_j for r in rows],
                )
                if telemetry:
                    for name in TELEMETRY:
                        setattr(rec, name, [getattr(r, name) for r in rows])
                out.append(rec)
        return out
