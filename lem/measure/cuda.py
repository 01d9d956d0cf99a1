"""torch.cuda when it is already running: measuring never imports torch nor initialises CUDA itself."""

from __future__ import annotations

import sys
from typing import Any


def cuda_in_use() -> Any:
    """torch.cuda when torch is already imported and CUDA initialised, else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda if torch.cuda.is_initialized() else None
    except Exception:  # a CPU-only or half-imported torch
        return None
