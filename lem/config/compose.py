"""Compose and validate a config in-process, as ``python -m lem`` does: for tests and library use.

``compose_config(["backend=vllm", ...])`` returns the composed DictConfig and the validated
``LemConfig``, or raises ``LemError`` with the one line the command prints (exit code 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lem.config.schema import LemConfig

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"


def compose_config(overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> tuple[Any, LemConfig]:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from lem.config.checks import validate
    from lem.config.hydra_errors import describe_config_exception
    from lem.config.schema import register_schema, to_dataclass
    from lem.config.yaml_origin import with_origin
    from lem.errors import ConfigError, LemError

    register_schema()
    choices: dict[str, Any] = {}
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            composed = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        choices = dict(composed.hydra.runtime.choices)
        with open_dict(composed):
            del composed["hydra"]
        lem_cfg = to_dataclass(composed)
        validate(lem_cfg)
    except ConfigError as error:
        raise with_origin(error, choices, conf_dir, list(overrides)) from None
    except LemError:
        raise
    except Exception as exc:
        message = describe_config_exception(exc, conf_dir, list(overrides))
        if message is None:
            raise
        raise LemError(message) from exc
    return composed, lem_cfg
