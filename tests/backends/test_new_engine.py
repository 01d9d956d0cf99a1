"""Adding an engine is one folder and one line in the registry (docs/architecture.md, "Adding an engine").

A copy of lem gets ``lem/backends/echo/`` (tests/backends/new_engine: config.py and engine.py) and
``"echo"`` in ``ENGINE_NAMES`` — nothing else — and then ``backend=echo`` is a Hydra option listed
in ``--help``, its knob is checked before anything runs, and a measured run completes with its records.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_model import make_tiny_model_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lem_with_echo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lem-copy")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "lem", root / "lem", ignore=ignore)
    shutil.copytree(REPO / "conf", root / "conf", ignore=ignore)
    shutil.copytree(Path(__file__).parent / "new_engine", root / "lem" / "backends" / "echo", ignore=ignore)
    (root / "lem" / "backends" / "echo" / "__init__.py").write_text("")
    registry = root / "lem" / "backends" / "registry.py"
    text = registry.read_text()
    assert 'ENGINE_NAMES = ("pytorch", ' in text
    registry.write_text(text.replace('ENGINE_NAMES = ("pytorch", ', 'ENGINE_NAMES = ("pytorch", "echo", ', 1))  # the one line
    return root


def run_copy(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "lem", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_a_new_engine_folder_and_registry_line_make_a_backend_option(lem_with_echo: Path) -> None:
    listed = run_copy(lem_with_echo, "--help", "backend=echo")
    assert listed.returncode == 0, listed.stderr
    assert "backend: echo, llama_cpp, llamacpp_server, openai, pytorch, sglang_server, tensorrt, trtllm_server, vllm, vllm_server" in listed.stdout
    assert "delay_ms: 0.0" in listed.stdout  # its knobs are in the composed config
    refused = run_copy(lem_with_echo, "backend=echo", "backend.echo.delay_ms=-1")
    assert refused.returncode == 2
    assert refused.stderr.strip() == "lem: error: backend.echo.delay_ms=-1.0: expected a number >= 0"


def test_a_new_engine_runs_a_measured_job(lem_with_echo: Path, tmp_path: Path) -> None:
    model = make_tiny_model_dir(tmp_path / "tiny")
    run_dir = tmp_path / "run"
    result = run_copy(
        lem_with_echo, "backend=echo", f"model.name_or_path={model}", "dataset.n_prompts=4", "dataset.max_output_tokens=3",
        "batching.batch_size=2", "energy.idle_baseline_s=0", "energy.codecarbon.enabled=false", "flops.strategy=params",
        "tracking.enabled=false", "report.format=json", f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["engine"] == "echo"
    assert summary["n_requests"] == 4 and summary["tokens"]["output_tokens"] == 12
    assert summary["batching"]["n_batches"] == 2
