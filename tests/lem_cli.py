"""Running ``python -m lem`` as a user would, offline, for the tests that drive the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def lem_env() -> dict[str, str]:
    """This environment, offline, without HYDRA_FULL_ERROR (lem's one-line errors are what is tested)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_lem(args: list[str], cwd: Path, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lem", *args], cwd=cwd, env=lem_env(), capture_output=True, text=True, timeout=timeout_s)
