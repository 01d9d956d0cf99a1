"""PeakMemory: the peak RSS of a window, from the kernel's high-water mark or from samples; CUDA peaks per GPU."""

from __future__ import annotations

import mmap
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import lem.measure.memory as memory
from lem.measure.memory import PeakMemory
from lem.records import MemoryRecord

MB = 1 << 20


def rss() -> int:
    return psutil.Process().memory_info().rss


def hold(nbytes: int, seconds: float) -> None:
    # Fresh pages from the kernel, each written so it is resident: an allocation through malloc may be
    # served from memory an earlier test in this process freed but kept resident, and not move RSS.
    block = mmap.mmap(-1, nbytes)
    for offset in range(0, nbytes, mmap.PAGESIZE):
        block[offset] = 1
    time.sleep(seconds)
    block.close()


def test_peak_covers_an_allocation_held_inside_the_window() -> None:
    before = rss()
    with PeakMemory() as peak:
        hold(96 * MB, 0.5)
    record = peak.record
    assert isinstance(record, MemoryRecord)
    assert record.peak_rss_bytes is not None
    assert record.peak_rss_bytes >= before + 90 * MB
    assert record.source in ("getrusage", "psutil")


def test_a_new_high_water_mark_comes_from_getrusage() -> None:
    maxrss = memory._ru_maxrss_bytes()
    assert maxrss is not None
    size = max(0, maxrss - rss()) + 64 * MB  # enough to push the process past its lifetime peak
    if size > 1024 * MB:
        pytest.skip("this process already peaked far above its current RSS")
    before = rss()
    with PeakMemory() as peak:
        hold(size, 0.05)
    assert peak.record.source == "getrusage"
    assert peak.record.peak_rss_bytes >= before + size - 8 * MB


def test_sampler_catches_a_peak_below_the_lifetime_high_water_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    # A high-water mark that never moves (an earlier, bigger peak): the window's peak must come from the samples.
    monkeypatch.setattr(memory, "_ru_maxrss_bytes", lambda: 1 << 40)
    before = rss()
    peak = PeakMemory(interval_s=0.02).start()
    hold(96 * MB, 0.5)  # freed before stop(), so only the background samples can have seen it
    record = peak.stop()
    assert record.source == "psutil"
    assert record.peak_rss_bytes >= before + 90 * MB
    assert record.peak_rss_bytes < before + 512 * MB  # not the fake lifetime mark


def test_without_psutil_or_rusage_the_peak_is_null_not_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_ru_maxrss_bytes", lambda: None)
    monkeypatch.setattr(memory, "_rss_reader", lambda: None)
    with PeakMemory() as peak:
        pass
    assert peak.record.peak_rss_bytes is None
    assert peak.record.cuda_peak_allocated_bytes is None
    assert peak.record.source == "none"


def test_no_cuda_figures_unless_cuda_is_in_use() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA already initialised in this process")
    with PeakMemory() as peak:
        pass
    assert peak.record.cuda_peak_allocated_bytes is None
    assert peak.record.cuda_peak_reserved_bytes is None
    assert "torch.cuda" not in peak.record.source


def test_memory_module_never_imports_torch() -> None:
    code = (
        "import sys\nfrom lem.measure.memory import PeakMemory\n"
        "r = PeakMemory().start().stop()\nassert r.peak_rss_bytes > 0\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_the_sampler_thread_stops() -> None:
    peak = PeakMemory(interval_s=0.01).start()
    peak.stop()
    assert all(t.name != "lem-peak-memory" for t in __import__("threading").enumerate())


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peaks_are_per_window_and_per_device() -> None:
    import torch

    big = torch.empty(512 * MB, dtype=torch.uint8, device="cuda")  # a peak before the window
    del big
    with PeakMemory() as peak:
        small = torch.empty(64 * MB, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
        del small
    record = peak.record
    assert record.cuda_peak_allocated_bytes is not None
    assert len(record.cuda_peak_allocated_bytes) == torch.cuda.device_count()
    assert 64 * MB <= record.cuda_peak_allocated_bytes[0] < 512 * MB  # reset at start
    assert record.cuda_peak_reserved_bytes[0] >= record.cuda_peak_allocated_bytes[0]
    assert "torch.cuda" in record.source
