"""Configs as plain dicts and lists: what is logged, stored in a study, or sent to another process.

OmegaConf is imported only when a value is converted, so importing this module costs nothing.
"""

from __future__ import annotations

from typing import Any


def plain(value: Any, *, enum_to_str: bool = False) -> Any:
    """An OmegaConf node (DictConfig, ListConfig) as plain dicts and lists, interpolations resolved;
    any other value as it is. ``enum_to_str``: enum values by name (for logs and params)."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(value):
        return value
    return OmegaConf.to_container(value, resolve=True, enum_to_str=enum_to_str)


def plain_config(cfg: Any) -> dict[str, Any] | None:
    """A whole config (DictConfig, dataclass or mapping) as a plain dict to log, Hydra's own section left out.

    Enums by name; interpolations that resolve only inside a Hydra job (``${hydra:...}``) or
    missing values stay as written. None when there is no config or it cannot be read.
    """
    if cfg is None:
        return None
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            try:
                data = plain(cfg, enum_to_str=True)
            except Exception:  # noqa: BLE001 - ${hydra:...} and missing values outside a job
                data = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
        else:
            import dataclasses

            data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): v for k, v in data.items() if k != "hydra"}
