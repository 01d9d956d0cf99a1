"""Workload values passed between the engine-independent layer and the engines."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """One request's text as it comes from the dataset, before any template or truncation."""

    request_id: int
    text: str


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready for any engine: chat template applied, truncated once, tokenised once.

    Every engine receives the same ``input_ids``, so engines are compared on equal terms.
    """

    request_id: int
    input_ids: tuple[int, ...]
    text: str  # the templated, truncated prompt; tokenising it gives exactly input_ids (for engines that take text)
    truncated: bool  # True when max_input_tokens cut the prompt

    @property
    def input_tokens(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class GenerationParams:
    """Engine-independent decoding settings; each engine maps them onto its own API."""

    max_output_tokens: int
    min_output_tokens: int = 0
    ignore_eos: bool = False
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    record_token_ids: bool = False  # request records carry their output token ids (not a decoding setting: engines ignore it)
