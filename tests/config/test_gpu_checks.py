"""gpu.power_limit_w and gpu.locked_sm_clock_mhz are refused in one line, exit 2, where no NVIDIA GPU is measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.test_bad_config import _has_cuda, refusal
from tests.test_cli import run_lem


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["gpu.power_limit_w=250", "backend.device=cpu"], "gpu.power_limit_w=250.0: expected null with backend.device=cpu (an NVIDIA GPU setting"),
        (["gpu.locked_sm_clock_mhz=1410", "backend.device=cpu"], "gpu.locked_sm_clock_mhz=1410: expected null with backend.device=cpu"),
        (["gpu.power_limit_w=0"], "gpu.power_limit_w=0.0: expected a number in (0.0, 10000.0]"),
        (["gpu.power_limit_w=-250"], "gpu.power_limit_w=-250.0: expected a number in (0.0, 10000.0]"),
        (["gpu.locked_sm_clock_mhz=0"], "gpu.locked_sm_clock_mhz=0: expected a number in (0, 10000]"),
        (["gpu.locked_sm_clock_mhz=fast"], "gpu.locked_sm_clock_mhz=fast: expected an integer"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_gpu_settings_are_refused_in_one_line(overrides: list[str], expected: str) -> None:
    assert expected in refusal(overrides)


@pytest.mark.skipif(_has_cuda(), reason="a machine without a GPU")
def test_a_gpu_setting_on_a_machine_without_a_gpu_is_refused() -> None:
    assert "gpu.power_limit_w=300.0: expected null on this machine: no NVIDIA GPU" in refusal(["gpu.power_limit_w=300"])


def test_the_command_line_refuses_a_power_limit_on_a_cpu_run_with_exit_2(tmp_path: Path) -> None:
    result = run_lem(["gpu.power_limit_w=250", "backend.device=cpu"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["lem: error: gpu.power_limit_w=250.0: expected null with backend.device=cpu (an NVIDIA GPU setting: run with backend.device=cuda, or leave it unset)"]
    assert not any(tmp_path.rglob("raw"))  # refused before anything ran
