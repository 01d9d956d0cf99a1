"""Peak memory over a window: process RSS and, when CUDA is in use, peak allocated/reserved per GPU.

    with PeakMemory() as peak:
        ...                      # the measured work
    record = peak.record         # lem.records.MemoryRecord

Process RSS has two sources. The kernel's own high-water mark (``getrusage`` ru_maxrss) is
exact but cannot be reset, so it describes this window only when it rose during the
window; otherwise the peak comes from psutil samples taken by a background thread every
``interval_s`` (a spike shorter than the interval can be missed). ``record.source`` says
which one was used. CUDA figures come from torch's caching allocator, and only when torch
is already imported and CUDA initialised: this module never imports torch itself.
"""

from __future__ import annotations

import os
import sys
import threading
from types import TracebackType

from lem.measure.cuda import cuda_in_use
from lem.records import MemoryRecord


def _ru_maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024  # bytes on macOS, KiB on Linux


def _rss_reader():
    try:
        import psutil
    except ImportError:
        return None
    process = psutil.Process(os.getpid())
    return lambda: int(process.memory_info().rss)


class PeakMemory:
    """A window over which peak RSS and peak CUDA memory are tracked."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self._read_rss = _rss_reader()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._sampled_peak: int | None = None
        self._maxrss_at_start: int | None = None
        self._cuda_reset = False
        self.record: MemoryRecord | None = None

    def start(self) -> PeakMemory:
        self.record = None
        self._stop.clear()
        self._maxrss_at_start = _ru_maxrss_bytes()
        cuda = cuda_in_use()
        if cuda is not None:
            for index in range(cuda.device_count()):
                cuda.reset_peak_memory_stats(index)  # peaks start from this window
        self._sampled_peak = None
        self._sample()
        if self._read_rss is not None:
            self._thread = threading.Thread(target=self._run, name="lem-peak-memory", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> MemoryRecord:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample()
        sources: list[str] = []
        peak_rss: int | None = None
        maxrss_now = _ru_maxrss_bytes()
        if maxrss_now is not None and self._maxrss_at_start is not None and maxrss_now > self._maxrss_at_start:
            peak_rss = maxrss_now  # the high-water mark rose inside the window: it is this window's exact peak
            sources.append("getrusage")
        elif self._sampled_peak is not None:
            peak_rss = self._sampled_peak
            sources.append("psutil")
        allocated: list[int] | None = None
        reserved: list[int] | None = None
        cuda = cuda_in_use()  # also covers CUDA initialised during the window (its peaks start there)
        if cuda is not None:
            count = cuda.device_count()
            allocated = [int(cuda.max_memory_allocated(i)) for i in range(count)]
            reserved = [int(cuda.max_memory_reserved(i)) for i in range(count)]
            sources.append("torch.cuda")
        self.record = MemoryRecord(
            peak_rss_bytes=peak_rss,
            cuda_peak_allocated_bytes=allocated,
            cuda_peak_reserved_bytes=reserved,
            source="+".join(sources) if sources else "none",
        )
        return self.record

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _sample(self) -> None:
        if self._read_rss is None:
            return
        try:
            rss = self._read_rss()
        except Exception:  # the process table can be briefly unreadable; a missed sample is harmless
            return
        with self._lock:
            if self._sampled_peak is None or rss > self._sampled_peak:
                self._sampled_peak = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()
