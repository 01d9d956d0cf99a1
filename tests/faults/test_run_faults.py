"""Runs that survive faults, as a user meets them: `python -m lem` in a subprocess on a tiny model.

Two runs in the same second, SIGTERM and Ctrl-C of a run and of a sweep mid-job, a hung engine
worker, an unwritable output folder, a full disk, a search without -m and sweeps whose jobs were
refused: each asserts the exit code, the one line on stderr and what the folder keeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny_model import make_tiny_model_dir

FAST = [
    "backend.pytorch.num_threads=1",
    "energy.idle_baseline_s=0",
    "tracking.enabled=false",
    "flops.strategy=analytical",
    "dataset.n_prompts=2",
    "dataset.max_output_tokens=4",
    "batching.batch_size=2",
]
# A run that keeps generating for minutes unless it is stopped; prompt + output within the tiny model's
# 256 positions (beyond them transformers prints a warning, a second stderr line).
LONG = ["dataset.n_prompts=400", "dataset.max_input_tokens=128", "dataset.max_output_tokens=64", "dataset.ignore_eos=true",
        "run.warmup_batches=0"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def lem_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def lem(args: list[str], cwd: Path, timeout_s: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lem", *args], cwd=cwd, env=lem_env(**env), capture_output=True, text=True, timeout=timeout_s
    )


def start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lem", *args], cwd=cwd, env=lem_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("lem: study:")]  # the study's plan: information


def one_line(result: subprocess.CompletedProcess[str] | tuple[int, str], code: int) -> str:
    returncode, stderr = (result.returncode, result.stderr) if not isinstance(result, tuple) else result
    lines = stderr_lines(stderr)
    assert returncode == code and len(lines) == 1, f"exit {returncode}, stderr:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def wait_for_requests(raw: Path, proc: subprocess.Popen[str], n: int = 2, timeout_s: float = 120) -> int:
    """Wait until the run has written ``n`` request records; return the engine worker's pid (from the header)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if raw.is_file():
            text = raw.read_text()
            if text.count('"kind": "request"') >= n:
                return int(json.loads(text.splitlines()[0])["pid"])
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run wrote no request records in time")


def assert_gone(pid: int) -> None:
    """Neither the engine worker nor anything in its process group lives on (zombies count as gone)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            state = "gone"
        group = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(p) == pid and _state(p) != "Z"]
        if state in ("gone", "Z") and not group:
            return
        time.sleep(0.1)
    pytest.fail(f"the engine worker {pid} or its process group outlived lem")


def _stat(p: Path) -> list[str]:
    try:
        return p.joinpath("stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _pgid(p: Path) -> int | None:
    fields = _stat(p)
    return int(fields[2]) if len(fields) > 2 else None


def _state(p: Path) -> str | None:
    fields = _stat(p)
    return fields[0] if fields else None


# --- one folder per run ----------------------------------------------------------------------------


def test_two_runs_started_in_the_same_second_each_get_their_own_folder(tiny_model: Path, tmp_path: Path) -> None:
    # The default pattern with the seconds fixed: both runs resolve the very same name.
    pattern = f"hydra.run.dir=${{lem.claim:run,{tmp_path}/outputs/day/12-00-00}}"
    args = [f"model.name_or_path={tiny_model}", pattern, *FAST]
    procs = [start(args, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    folders = sorted(p.name for p in (tmp_path / "outputs" / "day").iterdir())
    assert folders == ["12-00-00", "12-00-00-1"]
    pids = set()
    for name in folders:
        folder = tmp_path / "outputs" / "day" / name
        assert json.loads((folder / "summary.json").read_text())["status"] == "completed"
        assert not (folder / "error.txt").exists()
        raw = (folder / "raw" / "process-0.jsonl").read_text().splitlines()
        assert len([line for line in raw if json.loads(line)["kind"] == "header"]) == 1  # one run's records only
        pids.add(json.loads(raw[0])["pid"])
        assert sum(f"results: {folder}\n" in out for out, _ in outs) == 1  # each run names its own folder
    assert len(pids) == 2


def test_concurrent_claims_never_share_a_folder(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from lem.launch.run_dir import claim
    from lem.session import Session, begin

    def claim_in_own_session(_: int) -> str:
        begin(Session())  # a fresh memo each time, as in separate processes
        return claim(str(tmp_path / "day" / "12-00-00"))

    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(claim_in_own_session, range(24)))
    begin()
    assert len(set(claimed)) == 24 and all(Path(c).is_dir() for c in claimed)
    assert sorted(Path(c).name for c in claimed)[:2] == ["12-00-00", "12-00-00-1"]


def test_a_folder_holding_another_run_is_never_written_into(tmp_path: Path) -> None:
    other = tmp_path / "done"
    (other / "raw").mkdir(parents=True)
    (other / "summary.json").write_text('{"status": "completed"}')
    line = one_line(lem([f"hydra.run.dir={other}", *FAST], tmp_path), 2)
    assert line.startswith(f"lem: error: hydra.run.dir={other}: the folder already holds another run's results")
    assert sorted(p.name for p in other.iterdir()) == ["raw", "summary.json"]  # untouched: no .hydra, no log


# --- refused before anything loads ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["file-as-parent", "proc"])
def test_an_unwritable_output_folder_is_one_line_before_model_load(where: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = f"{blocker}/sub" if where == "file-as-parent" else "/proc/lem-cannot-write"
    started = time.monotonic()
    line = one_line(lem([f"hydra.run.dir={target}", *FAST], tmp_path), 2)
    assert line.startswith(f"lem: error: hydra.run.dir={target}: cannot write the run's results there: ")
    assert time.monotonic() - started < 30


def test_an_unwritable_sweep_folder_is_refused_before_any_job(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = lem(["-m", f"hydra.sweep.dir={blocker}/sweep", "batching.batch_size=1,2", *FAST], tmp_path)
    line = one_line(result, 2)
    assert line.startswith(f"lem: error: hydra.sweep.dir={blocker}/sweep: cannot write the run's results there: Not a directory")
    assert "Launching" not in result.stdout  # no job started (and no MLflow parent: the guard runs first)


@pytest.mark.parametrize("search", ["min_energy", "pareto"])
def test_hparams_search_without_m_is_refused(search: str, tmp_path: Path) -> None:
    line = one_line(lem([f"hparams_search={search}", *FAST], tmp_path), 2)
    assert line == (
        f"lem: error: hparams_search={search} is a sweep: add -m (python -m lem -m hparams_search={search} ...); "
        "without it lem would run one plain run"
    )
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no folder, no file


def test_a_sweep_of_refused_jobs_names_each_reason_once(tmp_path: Path) -> None:
    result = lem(["-m", "batching.batch_size=0,-3", "dataset.max_output_tokens=0,4", *FAST[:5]], tmp_path)
    line = one_line(result, 2)
    assert line.startswith("lem: error: 4 of 4 jobs refused: ")
    assert line.count("batching.batch_size=0") == 1 and line.count("batching.batch_size=-3") == 1
    assert not list(tmp_path.rglob("raw"))


def test_a_sweep_with_some_jobs_refused_runs_the_others_and_exits_1(tiny_model: Path, tmp_path: Path) -> None:
    result = lem(["-m", f"model.name_or_path={tiny_model}", "batching.batch_size=0,1", *FAST[:6]], tmp_path)
    assert result.returncode == 1, result.stderr
    lines = [line for line in stderr_lines(result.stderr) if line.startswith("lem:")]
    assert lines == ["lem: error: 1 of 2 jobs refused: batching.batch_size=0: expected a number >= 1 (job 0)"], result.stderr
    summaries = list(tmp_path.rglob("summary.json"))
    assert len(summaries) == 1 and summaries[0].parent.name == "1"


# --- interrupted -------------------------------------------------------------------------------------


def test_sigterm_stops_a_run_like_ctrl_c_and_keeps_what_was_measured(tiny_model: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start([f"model.name_or_path={tiny_model}", f"hydra.run.dir={run_dir}", *FAST, *LONG], tmp_path)
    worker = wait_for_requests(run_dir / "raw" / "process-0.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    line = one_line((proc.returncode, err), 143)
    assert line == f"lem: interrupted (SIGTERM) during generation; what was measured is kept in {run_dir} (see interrupted.txt)"
    assert_gone(worker)
    note = (run_dir / "interrupted.txt").read_text()
    assert note.startswith("interrupted by SIGTERM during generation; kept: ") and "request record(s) in raw/process-0.jsonl" in note
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "incomplete" and summary["n_requests"] >= 2  # KILLED in MLflow, not lost
    assert not (run_dir / "error.txt").exists()


def test_ctrl_c_of_a_sweep_mid_job_is_one_line_and_exit_130(tiny_model: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = start(["-m", f"model.name_or_path={tiny_model}", f"hydra.sweep.dir={sweep}", "run.seed=1,2", *FAST, *LONG], tmp_path)
    worker = wait_for_requests(sweep / "0" / "raw" / "process-0.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    line = one_line((proc.returncode, err), 130)
    assert line == f"lem: interrupted (SIGINT) during job 0 (generation); what was measured is kept in {sweep / '0'} (see interrupted.txt)"
    assert_gone(worker)
    assert (sweep / "0" / "interrupted.txt").is_file() and (sweep / "0" / "raw" / "process-0.jsonl").is_file()
    assert not (sweep / "1").exists()  # the sweep stopped: the next job never started


# --- hung worker and full disk -------------------------------------------------------------------


def test_a_full_disk_is_one_line_saying_what_was_kept(tiny_model: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # ENOSPC after the header and a few records: the raw file holds what fit.
    result = lem([f"model.name_or_path={tiny_model}", f"hydra.run.dir={run_dir}", *FAST], tmp_path, LEM_TEST_FAULT="enospc:3")
    line = one_line(result, 1)
    assert line.startswith("lem: error: No space left on device while writing ") and "kept: " in line and str(run_dir) in line
    error = (run_dir / "error.txt").read_text()
    assert error.startswith("No space left on device") and "Traceback" not in error  # never an empty error.txt
    assert len((run_dir / "raw" / "process-0.jsonl").read_text().splitlines()) == 3


def test_a_hung_job_fails_after_its_timeout_and_the_sweep_goes_on(tiny_model: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    started = time.monotonic()
    result = lem(
        ["-m", f"model.name_or_path={tiny_model}", f"hydra.sweep.dir={sweep}", "run.seed=1,2", "run.job_timeout_s=4", *FAST],
        tmp_path, LEM_TEST_FAULT="hang:setup",
    )
    assert result.returncode == 1 and time.monotonic() - started < 150, result.stderr
    lines = [line for line in stderr_lines(result.stderr) if line.startswith("lem:")]
    assert lines[0].startswith("lem: job 0 failed: the job timed out after 4 s (run.job_timeout_s) during setup")
    assert lines[-1] == "lem: 2 job(s) of the sweep failed: 0, 1"
    for job in ("0", "1"):
        assert "timed out after 4 s" in (sweep / job / "error.txt").read_text()
