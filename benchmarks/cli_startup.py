"""Wall time of `python -m lem --help` and `python -m lem --cfg job` (target: <= 1 s each).

Runs each command N times in fresh processes, interleaved, and prints the median and the
spread, with the machine's load average so a reader can judge the noise.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

REPEATS = int(os.environ.get("LEM_BENCH_REPEATS", "7"))
COMMANDS = {"--help": ["--help"], "--cfg job": ["--cfg", "job"]}


def time_once(args: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lem", *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    load_1m = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as cwd:
        for name, args in COMMANDS.items():
            time_once(args, cwd)  # warm the OS file cache; not counted
        for _ in range(REPEATS):
            for name, args in COMMANDS.items():
                times[name].append(time_once(args, cwd))
    print(f"CLI start-up, {REPEATS} runs each, interleaved; load average (1 min) {load_1m:.2f} on {os.cpu_count()} CPUs")
    for name, values in times.items():
        median = statistics.median(values)
        verdict = "ok" if median <= 1.0 else "OVER the 1 s target"
        print(f"  python -m lem {name:<9}  median {median:.3f} s  min {min(values):.3f}  max {max(values):.3f}  -> {verdict}")


if __name__ == "__main__":
    main()
