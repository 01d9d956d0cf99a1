"""run.job_timeout_s: a hung engine worker becomes a failed job, its process group killed, the phase named."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lem.launch.faults import JobTimedOut
from lem.launch.job import WorkerManager
from tests.launch.test_worker import job_cfg
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


# The deadline counts from the job's start, the worker's imports and model load included: a hang in
# generation needs a limit past them.
@pytest.mark.parametrize(
    ("phase", "limit", "said"), [("setup", 3, "setup (idle baseline, engine init or model load)"), ("generation", 20, "generation")]
)
def test_a_hung_worker_times_out_and_is_killed(phase: str, limit: int, said: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEM_TEST_FAULT", f"hang:{phase}")  # read by the spawned worker only
    cfg = job_cfg(tiny_model)
    cfg.run.job_timeout_s = limit  # type: ignore[attr-defined]  # the schema field may not exist yet: read with getattr
    manager = WorkerManager()
    started = time.monotonic()
    try:
        with pytest.raises(JobTimedOut) as raised:
            manager.run(cfg, tmp_path / "run")
        pid = raised.value.args[0].split("(pid ")[1].split(")")[0]
    finally:
        manager.stop()
    message = str(raised.value)
    assert message.startswith(f"the job timed out after {limit} s (run.job_timeout_s) during {said}: its engine worker (pid {pid}) was stopped")
    assert time.monotonic() - started < limit + 60
    assert manager.worker is None
    with pytest.raises(ProcessLookupError):
        os.killpg(int(pid), 0)  # nothing of the worker's process group is left
    stacks = tmp_path / "run" / "hang_traceback.txt"
    text = stacks.read_text()  # where it hung, for the bug report: every thread's stack at the deadline
    assert "most recent call first" in text
    assert phase == "setup" or "_sleep_forever" in text


def test_no_timeout_by_default(tiny_model: Path) -> None:
    from lem.launch.job import job_timeout_s

    cfg = job_cfg(tiny_model)
    assert job_timeout_s(cfg) is None
    cfg.run.job_timeout_s = 0  # type: ignore[attr-defined]
    assert job_timeout_s(cfg) is None
