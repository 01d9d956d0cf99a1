"""vLLM's repetition penalty with the EOS ids exempt, as lem's other engines apply it.

vLLM penalises every id of the prompt and output and offers no per-token exemption; a chat
template ends every turn with the EOS id, so a penalty > 1 lowers the chance to stop (issue 16,
item 12). This logits processor runs before vLLM's penalties (it is not argmax-invariant) and
pre-compensates each stop id the penalty will hit: a logit > 0 is multiplied by the penalty, one
<= 0 divided, so vLLM's penalty brings it back to the model's own value. Every other token is
penalised by vLLM as before. Loaded by vLLM's engine core from its qualified name
(``EngineArgs(logits_processors=[QUALNAME])``); it imports vllm, so nothing else in lem imports it.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

QUALNAME = "lem.backends.vllm.eos_exempt:EosExemptRepetitionPenalty"


class _Row:
    """One request's penalty and the stop ids vLLM's penalty would touch."""

    def __init__(self, penalty: float, stop_ids: list[int], prompt: list[int] | None, output: list[int]) -> None:
        self.penalty = penalty
        self.stop_ids = stop_ids
        self.in_prompt = {t for t in stop_ids if prompt is not None and t in prompt}
        self.output = output  # vLLM's running list of this request's output ids (a reference)

    def penalised_ids(self) -> list[int]:
        return [t for t in self.stop_ids if t in self.in_prompt or t in self.output]


class EosExemptRepetitionPenalty(LogitsProcessor):
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, _Row] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # runs before vLLM's penalties, and changes greedy choices (as the exemption should)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, _new_row)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, row in self.rows.items():
            ids = row.penalised_ids()
            if not ids:
                continue
            values = logits[index, ids]
            logits[index, ids] = torch.where(values > 0, values * row.penalty, values / row.penalty)
        return logits


def _new_row(params: Any, prompt: list[int] | None, output: list[int]) -> _Row | None:
    penalty = float(getattr(params, "repetition_penalty", 1.0) or 1.0)
    stop_ids = sorted(int(t) for t in getattr(params, "all_stop_token_ids", ()) or ())
    if penalty == 1.0 or not stop_ids:
        return None
    return _Row(penalty, stop_ids, prompt, output)
