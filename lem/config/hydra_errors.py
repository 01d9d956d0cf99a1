"""Turn Hydra/OmegaConf composition errors into one line: key, value, what is allowed."""

from __future__ import annotations

import dataclasses
import re
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

from lem.config.schema import LemConfig
from lem.errors import first_line

_GROUPS = ("model", "dataset", "backend", "batching", "sharding", "decoder", "traffic", "precision", "experiment")


def describe_config_exception(exc: BaseException, conf_dir: Path, argv: Sequence[str]) -> str | None:
    """A one-line description of a config error, or None when ``exc`` is not one (a bug)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lem.config.yaml_origin import yaml_syntax_error

    chain = _exception_chain(exc)
    syntax = yaml_syntax_error(chain)
    if syntax is not None:
        return syntax
    if not any(isinstance(e, (HydraException, OmegaConfBaseException)) for e in chain):
        return None
    text = " ".join(str(e) for e in chain)

    missing = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    if missing:
        group, option = missing.group(1), missing.group(2)
        return f"{group}={option}: expected one of {', '.join(_group_options(conf_dir, group)) or '(none)'}"

    omega = next((e for e in chain if isinstance(e, OmegaConfBaseException)), None)
    if omega is not None:
        return _describe_omegaconf(omega, argv, _file_of(text, conf_dir, argv))

    no_match = re.search(r"Could not override '([^']+)'", text)
    if no_match:
        key = no_match.group(1)
        return f"{key}={_value_in_argv(key, argv)}: unknown key; top-level keys and groups: {', '.join(_top_level_keys())}"

    return f"could not compose the config: {first_line(chain[0])}"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _file_of(text: str, conf_dir: Path, argv: Sequence[str]) -> Path | None:
    """The config file Hydra was merging when it failed ("In 'experiment/quick': ..."), if any."""
    from lem.config.yaml_origin import config_dirs, option_file

    merging = re.search(r"In '([\w/.\-]+)'", text)
    return option_file(merging.group(1), config_dirs(conf_dir, argv)) if merging else None


def _describe_omegaconf(err: Any, argv: Sequence[str], source: Path | None = None) -> str:
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        ValidationError,
    )

    from lem.config.yaml_origin import where

    full_key = str(getattr(err, "full_key", "") or "")
    msg = str(getattr(err, "msg", "") or str(err)).splitlines()[0]
    value = _value_in_argv(full_key, argv)
    if value == "?" and source is not None:  # the value came from a config file: show it, and where it is
        found = re.search(r"Value '(.*?)' (of type|is not)", msg)
        value = f"{found.group(1) if found else '?'} (in {where(source, full_key)})"

    if isinstance(err, MissingMandatoryValue):
        return f"{full_key}=???: a value is required, e.g. {full_key}=..."
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        bad_key = full_key or _quoted(msg) or "?"
        parent, _, _ = bad_key.rpartition(".")
        allowed = _fields_at(parent)
        where = parent or "the top level"
        return f"{bad_key}={value}: unknown key; {where} has: {', '.join(allowed)}"
    if isinstance(err, ValidationError):
        field_type = _field_type(full_key)
        if isinstance(field_type, type) and issubclass(field_type, Enum):
            return f"{full_key}={value}: expected one of {', '.join(m.name for m in field_type)}"
        if field_type is not None:
            return f"{full_key}={value}: expected {_type_words(field_type)}"
        return f"{full_key}={value}: {msg}"
    return f"{full_key or 'config'}={value}: {msg}"


def _quoted(msg: str) -> str | None:
    m = re.search(r"'([^']+)'", msg)
    return m.group(1) if m else None


def _value_in_argv(key: str, argv: Sequence[str]) -> str:
    for arg in argv:
        name, sep, val = arg.lstrip("+~").partition("=")
        if sep and name == key:
            return val
    return "?"


def _group_options(conf_dir: Path, group: str) -> list[str]:
    from lem.config.help import group_options

    return group_options(conf_dir).get(group, [])


def _top_level_keys() -> list[str]:
    return sorted(set(_fields_at("")) | set(_GROUPS))


def _node_type(path: str) -> Any:
    node: Any = LemConfig
    for part in [p for p in path.split(".") if p]:
        if not dataclasses.is_dataclass(node):
            return None
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return None
        node = _resolve_type(node, fields[part])
    return node


def _resolve_type(owner: Any, field: dataclasses.Field) -> Any:
    import typing

    hints = typing.get_type_hints(owner)
    hint = hints[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return hint


def _fields_at(path: str) -> list[str]:
    node = _node_type(path)
    if node is None or not dataclasses.is_dataclass(node):
        return []
    return [f.name for f in dataclasses.fields(node)]


def _field_type(full_key: str) -> Any:
    return _node_type(full_key) if full_key else None


def _type_words(field_type: Any) -> str:
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return words.get(field_type, getattr(field_type, "__name__", str(field_type)))
