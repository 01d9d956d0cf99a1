"""lem's decoding settings as a llama.cpp C sampler chain, in Hugging Face ``generate``'s order.

EOS mask for min/ignore_eos → repetition penalty over prompt + output, EOS ids exempt →
temperature → top-k → top-p → draw, instead of llama-cpp-python's default chain (top-k →
typical → top-p → min-p → temperature, min_p=0.05), which would decode differently. ``sampler_steps`` and the seeds are
plain Python (unit-testable without the package); the chains take the ``llama_cpp`` module as
an argument and never import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from lem.workload.types import GenerationParams


@dataclass(frozen=True)
class SamplerStep:
    """One llama.cpp C sampler: ``llama_sampler_init_<kind>(*args)``."""

    kind: str  # logit_bias | penalties | temp | top_k | top_p | greedy | dist
    args: tuple[Any, ...] = ()


def sampler_steps(
    params: GenerationParams,
    *,
    eos_ids: Sequence[int],
    mask_eos: bool,
    penalty_window_tokens: int,
    seed: int,
) -> list[SamplerStep]:
    """lem's decoding settings as a llama.cpp sampler chain, in Hugging Face ``generate``'s order.

    ``mask_eos``: EOS may not be drawn (min_output_tokens not reached yet, or ignore_eos — as
    in the PyTorch adapter, where min_new_tokens masks it). The repetition penalty covers the
    whole prompt and output (``penalty_window_tokens``), as Hugging Face's does, except the EOS
    ids, which ``SamplerChains.accept_prompt`` keeps out of its history.
    """
    steps: list[SamplerStep] = []
    if mask_eos and eos_ids:
        steps.append(SamplerStep("logit_bias", tuple((int(t), -math.inf) for t in sorted(eos_ids))))
    if params.repetition_penalty != 1.0:
        steps.append(SamplerStep("penalties", (penalty_window_tokens, float(params.repetition_penalty), 0.0, 0.0)))
    if not params.do_sample:
        steps.append(SamplerStep("greedy"))
        return steps
    if params.temperature != 1.0:
        steps.append(SamplerStep("temp", (float(params.temperature),)))
    if params.top_k > 0:
        steps.append(SamplerStep("top_k", (int(params.top_k),)))
    if params.top_p < 1.0:
        steps.append(SamplerStep("top_p", (float(params.top_p), 1)))  # min_keep 1, as Hugging Face's
    steps.append(SamplerStep("dist", (seed & 0xFFFFFFFF,)))
    return steps


def request_seed(params: GenerationParams, request_id: int) -> int:
    """Each request its own random stream, reproducible whatever order requests are served in."""
    return (params.seed * 1_000_003 + request_id) & 0xFFFFFFFF


def eos_mask_until(params: GenerationParams) -> int:
    """Output tokens during which EOS is masked: all of them with ignore_eos, else min_output_tokens."""
    return params.max_output_tokens if params.ignore_eos else params.min_output_tokens


class SamplerChains:
    """The C sampler chain(s) for one request; two when EOS is masked for only the first tokens.

    A chain's penalty history grows with every accepted token, so the token a chain did not
    sample is accepted into the other one: both see the same history.
    """

    def __init__(
        self, lib: Any, params: GenerationParams, eos_ids: Sequence[int], n_vocab: int, window: int, seed: int, masked_until: int
    ) -> None:
        self._lib = lib
        self._masked_until = masked_until
        self._eos_ids = frozenset(int(t) for t in eos_ids)
        kinds = [False] if masked_until == 0 else [True] if masked_until >= params.max_output_tokens else [True, False]
        self._chains: dict[bool, Any] = {}
        for mask in kinds:
            steps = sampler_steps(params, eos_ids=eos_ids, mask_eos=mask, penalty_window_tokens=window, seed=seed)
            self._chains[mask] = _build_chain(lib, steps, n_vocab)

    def accept_prompt(self, prompt: Sequence[int]) -> None:
        """The prompt into the penalty history, less its EOS ids: lem never penalises EOS (a chat
        template ends every turn with it). A sampled EOS ends the request, so none enters later."""
        for chain in self._chains.values():
            for token in prompt:
                if token not in self._eos_ids:
                    self._lib.llama_sampler_accept(chain, token)

    def sample(self, ctx: Any, step: int) -> int:
        mask = step < self._masked_until
        token = int(self._lib.llama_sampler_sample(self._chains[mask], ctx, -1))  # samples and accepts
        other = self._chains.get(not mask)
        if other is not None:
            self._lib.llama_sampler_accept(other, token)
        return token

    def free(self) -> None:
        for chain in self._chains.values():
            self._lib.llama_sampler_free(chain)  # frees the samplers the chain owns
        self._chains = {}


def _build_chain(lib: Any, steps: Sequence[SamplerStep], n_vocab: int) -> Any:
    import ctypes

    params = lib.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = lib.llama_sampler_chain_init(params)
    for step in steps:
        if step.kind == "logit_bias":
            biases = (lib.llama_logit_bias * len(step.args))(*[lib.llama_logit_bias(t, b) for t, b in step.args])
            sampler = lib.llama_sampler_init_logit_bias(n_vocab, len(step.args), ctypes.cast(biases, lib.llama_logit_bias_p))
        elif step.kind == "penalties":
            sampler = lib.llama_sampler_init_penalties(n_vocab, *step.args)
        else:
            sampler = getattr(lib, f"llama_sampler_init_{step.kind}")(*step.args)
        lib.llama_sampler_chain_add(chain, sampler)
    return chain
