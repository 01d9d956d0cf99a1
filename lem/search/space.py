"""The search space: Hydra sweep syntax → Optuna distributions, and sampled values → overrides.

Accepted (the official Hydra Optuna sweeper's syntax):

- ``choice(a, b, c)``                → categorical
- ``range(start, stop[, step])``     → integers (or floats) from start up to, not including, stop
- ``shuffle(range(...))``            → categorical over the range's values
- ``interval(low, high)``            → float uniform on [low, high]
- ``int(interval(low, high))``       → integer uniform on [low, high]
- ``tag(log, interval(low, high))``  → the same on a log scale (also with ``int(...)``)
- a plain value                      → fixed for every trial
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lem.errors import LemError

# Characters a Hydra override value may hold without quotes.
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_./:+\-@]+$")


def parse_search_space(arguments: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``["batching.batch_size=choice(1,2)", "decoder=creative"]`` → ``(distributions, fixed)``.

    A later argument for the same key wins, so command-line sweeps override the preset's params.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    distributions: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for argument in arguments:
        try:
            override = parser.parse_overrides([argument])[0]
        except HydraException as exc:
            raise LemError(f"search space: cannot parse {argument!r}: {str(exc).splitlines()[0]}") from None
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[key] = distribution_from_override(override, argument)
        else:
            fixed[key] = override.get_value_element_as_str()
    return distributions, fixed


def distribution_from_override(override: Any, text: str = "") -> Any:
    """One Hydra sweep override → one Optuna distribution."""
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    value = override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution(_choices(override.sweep_iterator(transformer=Transformer.encode), text))
    if override.is_range_sweep():
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if not values:
            raise LemError(f"search space: {text} is empty")
        if value.shuffle or len(values) == 1:
            return CategoricalDistribution(_choices(values, text))
        step = value.step
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (value.start, value.stop, step)):
            # Hydra's range excludes stop; Optuna's high is inclusive: the last value of the range.
            return IntDistribution(int(values[0]), int(values[-1]), step=int(step))
        return FloatDistribution(float(values[0]), float(values[0]) + float(step) * (len(values) - 1), step=float(step))
    if override.is_interval_sweep():
        low, high = value.start, value.end
        log = "log" in value.tags
        if low is None or high is None or not low < high:
            raise LemError(f"search space: {text}: an interval needs low < high")
        if log and low <= 0:
            raise LemError(f"search space: {text}: a log-scale interval needs low > 0")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise LemError(f"search space: {text or override}: use choice(...), range(...), interval(...) or tag(log, interval(...))")


def _choices(values: Iterable[Any], text: str) -> tuple[Any, ...]:
    out = []
    for v in values:
        if not isinstance(v, (str, int, float, bool)):
            raise LemError(f"search space: {text}: choices must be strings, numbers or booleans, got {v!r}")
        out.append(v)
    if len(set(map(repr, out))) != len(out):
        raise LemError(f"search space: {text}: a choice is listed twice")
    return tuple(out)


def format_value(value: Any) -> str:
    """A sampled value as Hydra override text (quoted when it holds spaces, commas, brackets...)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    text = str(value)
    if _PLAIN_VALUE.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(params: Mapping[str, Any], fixed: Mapping[str, str]) -> list[str]:
    """The overrides that compose one trial's config: fixed task overrides, then sampled values."""
    out = [f"{key}={value}" for key, value in fixed.items() if key not in params]
    out += [f"{key}={format_value(value)}" for key, value in params.items()]
    return out


def grid_values(distribution: Any) -> list[Any]:
    """Every value of a discrete distribution (for GridSampler and exhaustive benchmarks)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution) and not distribution.log:
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        n = int(round((distribution.high - distribution.low) / distribution.step)) + 1
        return [distribution.low + i * distribution.step for i in range(n)]
    raise LemError(f"the grid sampler needs discrete values (choice or range), not {distribution}")
