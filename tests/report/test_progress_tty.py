"""A real run on a terminal shows its phases and generation progress live; with report.format=json it shows none.

``python -m lem`` runs under a pseudo-terminal (stdlib ``pty``), so lem and its engine worker see a
terminal on stderr, as in an interactive shell.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.tiny_model import make_tiny_model_dir
from tests.tracking.test_tracking import MODEL_NAME, lem_env

QUICK = ("tracking.enabled=false", "energy.idle_baseline_s=0", "flops.strategy=analytical", "backend.pytorch.num_threads=1",
         "dataset.max_output_tokens=4")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / MODEL_NAME)


def run_on_terminal(args: list[str], cwd: Path, timeout_s: float = 300.0) -> tuple[int, str]:
    """Run ``python -m lem ARGS`` with a pseudo-terminal as stdin, stdout and stderr; return (exit code, output)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # 50 rows x 200 columns
    env = lem_env(TERM="xterm-256color", COLUMNS="200", LINES="50")
    proc = subprocess.Popen([sys.executable, "-m", "lem", *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
    finally:
        os.close(master)
    rc = proc.wait(timeout=30)
    return rc, ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))


def test_a_sweep_on_a_terminal_shows_each_job_its_phases_and_generation_progress(tiny_model: Path, tmp_path: Path) -> None:
    rc, out = run_on_terminal(
        ["-m", f"model.name_or_path={tiny_model}", f"hydra.sweep.dir={tmp_path / 'sweep'}", "dataset.n_prompts=2,3", *QUICK], tmp_path
    )
    assert rc == 0, out[-3000:]
    for phase in ("engine init", "model load", "warmup", "generation"):
        assert f"job 1 of 2 · {phase}" in out, phase
    assert "job 2 of 2 · warmup" in out  # the reused worker gets the second job's label with the job
    assert "job 2 of 2 · engine init" not in out  # ... and its loaded engine: no setup phases
    assert "2/2 requests · 8 output tokens" in out  # job 1 finished: 2 prompts x 4 tokens
    assert "3/3 requests · 12 output tokens" in out
    assert "tok/s" in out
    assert out.index("job 1 of 2 · generation") < out.index("lem run summary")  # progress first, then the table
    # the sweep ends with its verdict: both jobs by J/token with their swept value and status, the best one named
    verdict = out[out.index("lem sweep verdict: 2 jobs, 0 failed"):]
    header = next(line for line in verdict.splitlines() if line.strip().startswith("job "))
    assert all(column in header for column in ("n_prompts", "J/tok (estimated)", "tok/s", "TTFT p99 ms", "status", "Pareto"))
    assert len([line for line in verdict.splitlines() if line.strip().startswith(("#0", "#1"))]) == 2
    assert "best job #" in verdict and "(least J/token): dataset.n_prompts=" in verdict


def test_json_on_a_terminal_prints_no_progress(tiny_model: Path, tmp_path: Path) -> None:
    rc, out = run_on_terminal(
        ["report.format=json", f"model.name_or_path={tiny_model}", f"hydra.run.dir={tmp_path / 'run'}", "dataset.n_prompts=2", *QUICK], tmp_path
    )
    assert rc == 0, out[-3000:]
    assert '"schema_version"' in out  # the run did print its JSON summary
    for text in ("engine init", "model load", "idle baseline", "requests ·", "━", "✓"):
        assert text not in out, text
