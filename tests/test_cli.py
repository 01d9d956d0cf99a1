"""The command line as a user meets it: --help, --cfg job, the subcommands, and bad input refused in one line."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from tests import lem_cli
from tests.config.test_bad_config import BAD_CONFIGS

run_lem = partial(lem_cli.run_lem, timeout_s=120)


# A handful of refusals as real commands: exit code 2, one stderr line, no results folder
# (the whole table runs in-process in tests/config/test_bad_config.py).
CLI_REFUSALS = [
    case for case in BAD_CONFIGS
    if " ".join(case[0]) in {
        "batching=foo", "backend=tensorflow", "batching.foo=1", "batching.batch_size=abc",
        "dataset=file dataset.path=/nonexistent/prompts.jsonl", "backend=vllm backend.vllm.gpu_memory_utilization=1.5", "x=[",
    }
]
assert len(CLI_REFUSALS) == 7, "a case of the subprocess subset is no longer in BAD_CONFIGS"


@pytest.mark.parametrize(("overrides", "expected"), CLI_REFUSALS, ids=[" ".join(o) for o, _ in CLI_REFUSALS])
def test_bad_config_is_refused_in_one_line(overrides: list[str], expected: str, tmp_path: Path) -> None:
    result = run_lem(overrides, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert lines[0].startswith("lem: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    # Refused before anything ran: no results folder left behind.
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("raw"))


def test_refused_run_leaves_no_results_folder(tmp_path: Path) -> None:
    result = run_lem(["batching.batch_size=0"], cwd=tmp_path)
    assert result.returncode == 2
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


def _imported_modules_after(args: list[str], tmp_path: Path) -> tuple[str, set[str]]:
    code = (
        "import sys, json\n"
        f"sys.argv = ['lem', *{args!r}]\n"
        "from lem.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('MODULES=' + json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out, _, modules = result.stdout.rpartition("MODULES=")
    import json

    return out, set(json.loads(modules))


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"]])
def test_help_and_cfg_import_no_heavy_library(args: list[str], tmp_path: Path) -> None:
    out, modules = _imported_modules_after(args, tmp_path)
    assert {"torch", "transformers", "mlflow"}.isdisjoint(modules)
    assert "batching" in out


def test_help_lists_groups_and_options(tmp_path: Path) -> None:
    result = run_lem(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    for line in [
        "batching: auto, continuous, dynamic, sorted_dynamic, sorted_static, static",
        "decoder: creative, deterministic, factual, standard",
        "precision: auto, bfloat16, float16, float32, int4, int8",
        "traffic: constant, offline, poisson",
        "sharding: data_parallel, none, pipeline_parallel, tensor_parallel",
        "experiment: high_concurrency, high_throughput, quick, standard_load",
    ]:
        assert line in result.stdout
    backend = next(line for line in result.stdout.splitlines() if line.startswith("backend: "))
    assert "pytorch" in backend.split(": ", 1)[1].split(", ")


def test_cfg_job_shows_overrides(tmp_path: Path) -> None:
    result = run_lem(["--cfg", "job", "batching=sorted_static", "batching.batch_size=3", "experiment=quick"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "strategy: sorted_static" in result.stdout
    # experiment=quick sets batch_size 8, the command line wins over it.
    assert "batch_size: 3" in result.stdout
    assert "n_prompts: 16" in result.stdout


def test_help_lists_the_launcher_presets_and_takes_overrides(tmp_path: Path) -> None:
    result = run_lem(["--help", "batching=dynamic"], cwd=tmp_path)
    assert result.returncode == 0
    launchers = next(line for line in result.stdout.splitlines() if line.startswith("hydra/launcher: "))
    assert {"parallel", "slurm", "submitit_local"} <= set(launchers.split(": ", 1)[1].split(", "))
    assert "max_tokens_per_batch: 4096" in result.stdout  # the composed config reflects the override
    bad = run_lem(["--help", "batching=nope"], cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("lem: error: batching=nope: expected one of")


@pytest.mark.parametrize("tool", ["summarize", "sync", "export", "ui", "model"])
def test_one_entry_point_dispatches_the_tools(tool: str, tmp_path: Path) -> None:
    result = run_lem([tool, "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"lem {tool}" in result.stdout  # the tool's own usage, not Hydra's
    assert "== Configuration groups ==" not in result.stdout


def test_help_lists_the_tools_and_run_is_the_default(tmp_path: Path) -> None:
    listed = run_lem(["--help"], cwd=tmp_path).stdout
    for tool in ("summarize", "sync", "export", "ui", "model"):
        assert f"lem {tool} " in listed
    explicit = run_lem(["run", "--cfg", "job", "batching.batch_size=3"], cwd=tmp_path)
    assert explicit.returncode == 0, explicit.stderr
    assert "batch_size: 3" in explicit.stdout
