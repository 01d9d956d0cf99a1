"""lem's repetition penalty for transformers ``generate``: Hugging Face's rule, EOS ids exempt.

Hugging Face's ``RepetitionPenaltyLogitsProcessor`` penalises every id in ``input_ids``, the
prompt included; a chat template ends every turn with the EOS id, so a penalty > 1 lowers the
chance to stop (issue 16, item 12). lem's penalty is the same rule (a logit > 0 is divided by
the penalty, one < 0 multiplied) over prompt and output, except on the EOS ids — as in the
llama.cpp adapter. ``generate`` appends custom processors after its own sampling warpers, so
the warpers come in this chain too, in ``generate``'s order (penalty → temperature → top-k →
top-p), and ``generate``'s own are switched off. transformers is imported when the chain is built.
"""

from __future__ import annotations

import functools
from typing import Any, Collection

from lem.workload.types import GenerationParams


def penalty_chain(params: GenerationParams, eos_ids: Collection[int]) -> Any:
    """The ``LogitsProcessorList`` for ``params`` when it sets a repetition penalty (else use generate's own)."""
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain = [_penalty_class()(params.repetition_penalty, eos_ids)]
    if params.do_sample:
        if params.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            chain.append(TopKLogitsWarper(top_k=params.top_k, min_tokens_to_keep=1))
        if params.top_p < 1.0:
            chain.append(TopPLogitsWarper(top_p=params.top_p, min_tokens_to_keep=1))
    return LogitsProcessorList(chain)


@functools.cache
def _penalty_class() -> type:
    import torch
    from transformers import LogitsProcessor

    class EosExemptRepetitionPenalty(LogitsProcessor):
        """Hugging Face's repetition penalty over every id in ``input_ids`` except ``exempt_ids``."""

        def __init__(self, penalty: float, exempt_ids: Collection[int]) -> None:
            self.penalty = float(penalty)
            self.exempt_ids = sorted(int(i) for i in exempt_ids)

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            seen = torch.zeros_like(scores, dtype=torch.bool)
            seen.scatter_(1, input_ids, True)
            if self.exempt_ids:
                seen[:, self.exempt_ids] = False
            penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
            return torch.where(seen, penalised, scores)

    return EosExemptRepetitionPenalty
