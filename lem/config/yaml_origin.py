"""Where in which YAML file a config value came from: ``file:line:column``, for one-line errors.

Used when a value that fails comes from a config file rather than the command line (``conf/`` or a
user's ``--config-dir``), and for YAML syntax errors, which name the file, line and column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_GLOBAL_PACKAGE = re.compile(r"^#\s*@package\s+_global_\s*$", re.MULTILINE)


def config_dirs(conf_dir: Path, argv: Sequence[str]) -> list[Path]:
    """The user's --config-dir/-cd and hydra.searchpath folders (searched first), then lem's conf/."""
    found: list[Path] = []
    args = list(argv)
    for i, arg in enumerate(args):
        for flag in ("--config-dir", "-cd"):
            if arg == flag and i + 1 < len(args):
                found.append(Path(args[i + 1]))
            elif arg.startswith(flag + "="):
                found.append(Path(arg.split("=", 1)[1]))
        if arg.startswith("hydra.searchpath="):
            found += [Path(p.removeprefix("file://")) for p in re.findall(r"file://[^,\]\s]+", arg)]
    return [*found, conf_dir]


def option_file(option: str, dirs: Sequence[Path]) -> Path | None:
    """``experiment/quick`` → the first ``<dir>/experiment/quick.yaml`` that exists."""
    for folder in dirs:
        path = folder / f"{option}.yaml"
        if path.is_file():
            return path
    return None


def locate_key(path: Path, key: str) -> tuple[int, int] | None:
    """1-based (line, column) of ``key``'s value in ``path``, by the file's package (its group or _global_)."""
    node = _value_node(path, key)
    return (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else None


def _value_node(path: Path, key: str) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        node: Any = yaml.compose(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    parts = key.split(".")
    if not _GLOBAL_PACKAGE.search(text) and parts[0] == path.parent.name:
        parts = parts[1:]  # a group file's keys sit under its group (its default package)
    for part in parts:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((value for k, value in node.value if getattr(k, "value", None) == part), None)
        if node is None:
            return None
    return node


def where(path: Path, key: str) -> str:
    """``file:line:column`` of ``key`` in ``path`` (``file`` when the key cannot be placed)."""
    spot = locate_key(path, key)
    return f"{path}:{spot[0]}:{spot[1]}" if spot else str(path)


def yaml_syntax_error(chain: Sequence[BaseException]) -> str | None:
    """One line for a YAML syntax error in a config file: file:line:column, what the parser found."""
    import yaml

    error = next((e for e in chain if isinstance(e, yaml.MarkedYAMLError)), None)
    if error is None:
        return None
    mark = error.problem_mark or error.context_mark
    place = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else "a config file"
    context = error.context
    if context and error.context_mark is not None and error.context_mark is not mark:
        context += f" from line {error.context_mark.line + 1} column {error.context_mark.column + 1}"
    what = "; ".join(part for part in (context, error.problem) if part)
    return f"{place}: not valid YAML ({what})"


def origin_of(key: str, value: Any, choices: dict[str, Any], dirs: Sequence[Path]) -> str | None:
    """``file:line:column`` of the chosen config file that set ``key`` to ``value``, or None.

    ``choices`` is Hydra's ``runtime.choices`` (group → option); the primary ``config.yaml`` counts too.
    The last match wins, as later files in the defaults list (an experiment) win when Hydra composes.
    """
    import yaml

    shown = str(getattr(value, "value", value))  # an Enum's value, as the YAML spells it
    found = None
    candidates = [option_file("config", dirs)]
    candidates += [option_file(f"{group}/{option}", dirs) for group, option in choices.items() if option and not group.startswith("hydra")]
    for path in candidates:
        node = _value_node(path, key) if path is not None else None
        if isinstance(node, yaml.ScalarNode) and _same(node.value, shown):
            found = f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"
    return found


def _same(text: str, shown: str) -> bool:
    if text == shown or text.lower() == shown.lower():
        return True
    try:
        number, expected = float(text.replace(".nan", "nan").replace(".inf", "inf")), float(shown)
    except ValueError:
        return False
    return number == expected or (math.isnan(number) and math.isnan(expected))


def with_origin(error: Exception, choices: dict[str, Any], conf_dir: Path, argv: Sequence[str]) -> Exception:
    """A ConfigError whose value came from a config file, not the command line, re-worded to say where."""
    from lem.errors import ConfigError, LemError

    if not isinstance(error, ConfigError) or any(a.lstrip("+~").startswith(f"{error.key}=") for a in argv):
        return error
    origin = origin_of(error.key, error.value, choices, config_dirs(conf_dir, argv))
    return LemError(f"{error} (set in {origin})") if origin else error
