"""Experiment and decoder presets compose with the defaults, validate, and set what they promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from lem.config.checks import validate
from lem.config.schema import register_schema, to_dataclass

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_dataclass(hydra_compose(config_name="config", overrides=list(overrides)))


@pytest.mark.parametrize(
    ("name", "batch_size", "max_output_tokens"),
    [("standard_load", 128, 500), ("high_concurrency", 256, 500), ("high_throughput", 256, 2000)],
)
def test_published_workloads(name: str, batch_size: int, max_output_tokens: int) -> None:
    cfg = compose(f"experiment={name}")
    validate(cfg)
    assert cfg.batching.batch_size == batch_size and cfg.dataset.max_output_tokens == max_output_tokens
    assert cfg.dataset.ignore_eos  # fixed output length
    d = cfg.decoder
    assert (d.do_sample, d.temperature, d.top_p, d.top_k, d.repetition_penalty) == (True, 0.8, 0.95, 0, 1.0)
    assert cfg.dataset.n_prompts % batch_size == 0 and cfg.cycles >= 3  # full batches, repeated for a CI


def test_quick_preset_is_small() -> None:
    cfg = compose("experiment=quick")
    validate(cfg)
    assert cfg.dataset.n_prompts * cfg.dataset.max_output_tokens <= 16 * 32


def test_experiment_values_can_still_be_overridden() -> None:
    cfg = compose("experiment=standard_load", "batching.batch_size=64", "decoder.temperature=0.5")
    assert cfg.batching.batch_size == 64 and cfg.decoder.temperature == 0.5


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("deterministic", (False, 1.0, 1.0, 0, 1.0)),
        ("standard", (True, 1.0, 1.0, 50, 1.0)),
        ("creative", (True, 0.8, 0.95, 0, 1.1)),
        ("factual", (True, 0.3, 0.9, 40, 1.0)),
    ],
)
def test_decoder_presets_map_to_sampling_values(preset: str, expected: tuple) -> None:
    d = compose(f"decoder={preset}").decoder
    assert d.preset == preset
    assert (d.do_sample, d.temperature, d.top_p, d.top_k, d.repetition_penalty) == expected


def test_decoder_values_reach_the_engine_parameters() -> None:
    from lem.workload.serve import generation_params

    p = generation_params(compose("decoder=factual", "decoder.seed=7", "decoder.top_k=10"))
    assert (p.do_sample, p.temperature, p.top_p, p.top_k, p.seed) == (True, 0.3, 0.9, 10, 7)
