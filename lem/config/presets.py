"""The decoder preset's label says what the run decoded with.

``conf/decoder/<name>.yaml`` sets ``preset: ${lem_decoder_label:<name>}``: the label is the
preset's name while its settings are the preset's, and names every changed setting otherwise
(``decoder=creative decoder.do_sample=false`` is labelled ``creative+do_sample=false``), so no
run is tagged with settings it did not use. A label the user sets (``decoder.preset=mine``) is kept.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

DECODING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
RESOLVER = "lem_decoder_label"
DECODER_PRESETS = Path(__file__).resolve().parents[2] / "conf" / "decoder"  # lem's own (lem.config.compose.CONF_DIR)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, decoder_label)


def decoder_label(name: str, *, _parent_: Any) -> str:
    """``name``, or ``name+key=value...`` for each decoding setting that differs from the preset's."""
    preset = _preset_settings(name)
    changed = [f"{key}={_show(_parent_.get(key))}" for key in DECODING_KEYS if key in preset and _parent_.get(key) != preset[key]]
    return "+".join([name, *changed])


@functools.cache
def _preset_settings(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = DECODER_PRESETS / f"{name}.yaml"
    if not path.is_file():
        return {}
    loaded = OmegaConf.to_container(OmegaConf.load(path))
    return {k: v for k, v in loaded.items() if k in DECODING_KEYS} if isinstance(loaded, dict) else {}


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
