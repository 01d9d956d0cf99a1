"""CUDA device helpers shared by the serving-engine adapters (torch imported only when called)."""

from __future__ import annotations


def cuda_device_names(n: int) -> list[str]:
    """The names of the first ``n`` visible CUDA devices (fewer if fewer are visible; none without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(min(n, torch.cuda.device_count()))]


def empty_cuda_cache() -> None:
    """Give this process's cached, unused CUDA memory back, where CUDA was ever used here."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
