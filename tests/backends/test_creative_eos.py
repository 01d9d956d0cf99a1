"""The ``creative`` preset's repetition penalty never penalises the EOS id a chat template puts in the prompt.

Hugging Face's and llama.cpp's repetition penalties cover prompt tokens, and chat templates end
every turn with EOS, so creative (penalty 1.1) runs stopped far less often (issue 16, item 12).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lem.config.compose import compose_config
from lem.workload.serve import generation_params
from lem.workload.types import GenerationParams, PreparedRequest
from tests.backends.test_llama_cpp import EOS, FakeLib, fake_backend
from tests.backends.test_pytorch import make_backend
from tests.tiny_model import EOS_ID, IM_START_ID, make_tiny_model_dir

torch.set_num_threads(1)  # the CPU is shared with other test runs


@pytest.fixture(scope="module")
def creative() -> GenerationParams:
    _, cfg = compose_config(["decoder=creative", "dataset.max_output_tokens=4"])
    return generation_params(cfg)


def test_pytorch_creative_leaves_the_prompt_eos_logit_unpenalised(creative: GenerationParams, tmp_path: Path) -> None:
    """generate's processed scores for EOS are its raw logit / temperature although EOS is in the prompt."""
    backend = make_backend(make_tiny_model_dir(tmp_path / "tiny"))
    # A chat-templated prompt: <|im_start|> ... <|im_end|> (EOS) then the assistant turn.
    prompt = torch.tensor([[IM_START_ID, 10, 11, 12, EOS_ID, IM_START_ID, 13]])
    out = backend.model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        **backend._generation_kwargs(creative),
        output_scores=True,
        output_logits=True,
        return_dict_in_generate=True,
    )
    raw, processed = out.logits[0][0], out.scores[0][0]
    assert processed[EOS_ID].item() == pytest.approx(raw[EOS_ID].item() / creative.temperature, rel=1e-5)
    # Every other prompt token is still penalised, as Hugging Face's rule does (where top-p kept it).
    others = [t for t in {IM_START_ID, 10, 11, 12, 13} if torch.isfinite(processed[t])]
    assert others
    for t in others:
        logit = raw[t].item()
        penalised = logit / creative.repetition_penalty if logit > 0 else logit * creative.repetition_penalty
        assert processed[t].item() == pytest.approx(penalised / creative.temperature, rel=1e-5)


class _SamplingLib(FakeLib):
    """The fake llama.cpp library, with the sampling steps creative adds."""

    def llama_sampler_init_temp(self, t: float) -> tuple:
        return ("temp", t)

    def llama_sampler_init_top_p(self, p: float, min_keep: int) -> tuple:
        return ("top_p", p)


def test_llama_cpp_creative_keeps_the_prompt_eos_out_of_the_penalty_history(creative: GenerationParams) -> None:
    backend, _, _ = fake_backend([5, 6, EOS, 7])
    backend._lib = lib = _SamplingLib()
    chat_prompt = PreparedRequest(request_id=1, input_ids=(11, 12, EOS, 13), text="x", truncated=False)
    (raw,) = backend.generate([chat_prompt], creative)
    assert raw.output_token_ids == [5, 6, EOS]
    (chain,) = lib.chains
    assert any(step[0] == "penalties" for step in chain.steps)  # creative still penalises repeats
    assert chain.history == [11, 12, 13, 5, 6, EOS]  # all but the prompt's EOS; the sampled EOS ends it
