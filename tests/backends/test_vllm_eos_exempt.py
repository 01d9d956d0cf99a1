"""vLLM's repetition penalty, with lem's logits processor before it, leaves the EOS logit as the model gave it."""

from __future__ import annotations

import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm.model_executor.layers.utils import apply_penalties  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from lem.backends.vllm.engine import vllm_sampling_kwargs  # noqa: E402
from lem.backends.vllm.eos_exempt import EosExemptRepetitionPenalty  # noqa: E402
from lem.workload.types import GenerationParams  # noqa: E402

EOS, VOCAB = 2, 16
CHAT_PROMPT = [1, 7, 8, EOS, 1, 9]  # <|im_start|> ... <|im_end|> <|im_start|> assistant


def _params(penalty: float) -> SamplingParams:
    creative = GenerationParams(max_output_tokens=8, do_sample=True, temperature=0.8, top_p=0.95, repetition_penalty=penalty)
    return SamplingParams(**vllm_sampling_kwargs(creative, frozenset({EOS})))


def _sample_step(processor: EosExemptRepetitionPenalty, logits: torch.Tensor, prompts: list[list[int]]) -> torch.Tensor:
    """What vLLM's sampler does up to temperature: logits processors, then its penalties."""
    out = processor.apply(logits.clone())
    prompt_t = torch.tensor(prompts)
    no_output = torch.full((len(prompts), 1), VOCAB)  # vocab_size pads: no output token yet
    penalties = torch.tensor([1.1, 1.0])
    return apply_penalties(out, prompt_t, no_output, torch.zeros(2), torch.zeros(2), penalties)


def test_eos_in_the_prompt_is_not_penalised_other_prompt_tokens_are() -> None:
    processor = EosExemptRepetitionPenalty(None, torch.device("cpu"), False)
    prompts = [CHAT_PROMPT, CHAT_PROMPT]
    added = [(0, _params(1.1), prompts[0], []), (1, _params(1.0), prompts[1], [])]
    processor.update_state(BatchUpdate(batch_size=2, removed=[], added=added, moved=[]))
    logits = torch.linspace(-3.0, 4.0, VOCAB).repeat(2, 1)
    logits[:, EOS] = torch.tensor([2.5, -1.5])
    out = _sample_step(processor, logits, prompts)
    assert out[0, EOS].item() == pytest.approx(2.5, rel=1e-6)  # exempt
    assert out[0, 9].item() == pytest.approx(logits[0, 9].item() / 1.1 if logits[0, 9] > 0 else logits[0, 9].item() * 1.1, rel=1e-6)
    assert torch.equal(out[1], logits[1])  # no penalty asked: nothing touched


def test_state_follows_vllm_moving_requests_between_rows() -> None:
    processor = EosExemptRepetitionPenalty(None, torch.device("cpu"), False)
    processor.update_state(BatchUpdate(batch_size=2, removed=[], added=[(0, _params(1.1), CHAT_PROMPT, [])], moved=[]))
    processor.update_state(BatchUpdate(batch_size=2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert list(processor.rows) == [1]
    processor.update_state(BatchUpdate(batch_size=1, removed=[1], added=[], moved=[]))
    assert processor.rows == {}
