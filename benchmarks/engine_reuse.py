"""Wall time of a 12-job sweep (decoder preset x batch size) with engine reuse against without (target: >= 2x faster).

Runs the same Hydra multirun twice on the embedded model on CPU — ``run.reuse_engine=true``
(lem's default: consecutive jobs with the same engine settings share one loaded model) and
``run.reuse_engine=false`` (every job loads its own) — interleaved over LEM_BENCH_REPEATS
rounds, and prints the median wall time of each, their ratio, and how many times the model
was loaded (raw headers with ``engine_reused: false``), with the load average.

    python benchmarks/engine_reuse.py            # a few minutes on a laptop CPU
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPEATS = int(os.environ.get("LEM_BENCH_REPEATS", "1"))
THREADS = int(os.environ.get("LEM_BENCH_THREADS", "2"))
# 4 decoder presets x 3 batch sizes = 12 jobs. A short workload, no warmup pass (the same in both
# arms): the benchmark isolates what reuse saves, the setup stage (engine init, model load).
SWEEP = ["decoder=deterministic,standard,creative,factual", "batching.batch_size=1,2,4"]
WORKLOAD = os.environ.get("LEM_BENCH_WORKLOAD", "dataset.n_prompts=4 dataset.max_output_tokens=4 run.warmup_batches=0").split()
TIMEOUT_S = 3600


def run_sweep(reuse: bool, root: Path) -> tuple[float, int, int]:
    """``(wall_s, jobs, model_loads)`` of one sweep."""
    sweep_dir = root / ("reuse" if reuse else "no-reuse") / str(time.monotonic_ns())
    cmd = [
        sys.executable, "-m", "lem", "-m", *SWEEP, *WORKLOAD,
        f"run.reuse_engine={'true' if reuse else 'false'}",
        f"hydra.sweep.dir={sweep_dir}",
        f"backend.pytorch.num_threads={THREADS}",
        "backend.device=cpu",
        "energy.idle_baseline_s=0",
        "flops.strategy=analytical",
        "tracking.enabled=false",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, text=True, timeout=TIMEOUT_S)
    wall_s = time.perf_counter() - start
    headers = [json.loads((d / "raw" / "process-0.jsonl").read_text().splitlines()[0]) for d in sweep_dir.iterdir() if (d / "raw").is_dir()]
    return wall_s, len(headers), sum(not h.get("engine_reused") for h in headers)


def main() -> None:
    load_before = os.getloadavg()[0]
    results: dict[bool, list[tuple[float, int, int]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="lem-bench-reuse-") as tmp:
        root = Path(tmp)
        for _ in range(REPEATS):
            for reuse in (True, False):
                results[reuse].append(run_sweep(reuse, root))
    load_after = os.getloadavg()[0]
    print(
        f"Engine reuse: 12-job sweep ({' '.join(SWEEP)}; {' '.join(WORKLOAD)}), embedded model, CPU, "
        f"{THREADS} threads, {REPEATS} round(s) interleaved; load average {load_before:.2f} -> {load_after:.2f} on {os.cpu_count()} CPUs"
    )
    medians = {}
    for reuse, runs in results.items():
        medians[reuse] = statistics.median(r[0] for r in runs)
        label = "with reuse   " if reuse else "without reuse"
        print(f"  {label}  median {medians[reuse]:7.1f} s  (runs: {', '.join(f'{r[0]:.1f}' for r in runs)})  jobs {runs[0][1]}, model loads {runs[0][2]}")
    ratio = medians[False] / medians[True]
    print(f"  speed-up     {ratio:.2f}x  -> {'meets' if ratio >= 2 else 'BELOW'} the 2x target")


if __name__ == "__main__":
    main()
