"""What counts as an output token: one rule for every engine, so engines are compared on equal terms."""

from __future__ import annotations

from typing import Collection, Sequence

FINISH_STOP = "stop"  # the request ended itself (EOS or another stopping criterion)
FINISH_LENGTH = "length"  # the request ran to max_output_tokens


def count_output_tokens(
    output_token_ids: Sequence[int],
    eos_token_ids: Collection[int],
    ignore_eos: bool,
    pad_token_id: int | None = None,
) -> tuple[int, str]:
    """The number of tokens the model really generated for one request, and why it finished.

    ``output_token_ids`` are the new tokens of one row as the engine returned them; a batched
    Hugging Face ``generate`` keeps writing ``pad_token_id`` into a row after it finished,
    until the longest row of the batch is done.

    - ``ignore_eos=False``: the tokens up to and including the first EOS count (the EOS was
      generated and cost a forward pass); everything after it is padding. An EOS ends the
      request with ``"stop"``. Without an EOS, a trailing run of ``pad_token_id`` (when it is
      not itself an EOS id) means another stopping criterion ended the row early: the pads are
      dropped and the finish is ``"stop"``. Otherwise every token counts and the finish is
      ``"length"``. When the pad id equals an EOS id (common: GPT-2, SmolLM2) padding looks
      like repeated EOS and the first-EOS rule already handles it.
    - ``ignore_eos=True``: the engine was told to generate exactly ``max_output_tokens``
      (vLLM's ``ignore_eos``; in HF ``min_new_tokens = max_new_tokens`` suppresses EOS, and
      the pad token with it when they share an id), so no row finishes early and nothing is
      padding: every token counts, EOS ids included, and the finish is ``"length"``.
    """
    if ignore_eos:
        return len(output_token_ids), FINISH_LENGTH
    for position, token_id in enumerate(output_token_ids):
        if token_id in eos_token_ids:
            return position + 1, FINISH_STOP
    if pad_token_id is not None and pad_token_id not in eos_token_ids:
        n_real = _without_trailing(output_token_ids, pad_token_id)
        if n_real < len(output_token_ids):
            return n_real, FINISH_STOP
    return len(output_token_ids), FINISH_LENGTH


def _without_trailing(token_ids: Sequence[int], pad_token_id: int) -> int:
    """Length of token_ids once its trailing run of pad_token_id is removed."""
    end = len(token_ids)
    while end > 0 and token_ids[end - 1] == pad_token_id:
        end -= 1
    return end
