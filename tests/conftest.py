"""Shared fixtures: a tiny real tokenizer built offline (no hub)."""

from __future__ import annotations

from typing import Any

import pytest

# A ChatML-style template that also writes the BOS token, like many real templates do.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<s>", "<|im_end|>", "<pad>", "<|im_start|>"]


@pytest.fixture(scope="session")
def tiny_tokenizer_json() -> str:
    """A byte-level BPE (GPT-2 style) trained in milliseconds on lem's built-in prompts."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    from lem.workload.builtin_prompts import builtin_prompts

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=TINY_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(builtin_prompts(), trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    return tokenizer.to_str()


@pytest.fixture
def tiny_tokenizer(tiny_tokenizer_json: str) -> Any:
    """A fresh PreTrainedTokenizerFast with BOS <s>, EOS <|im_end|>, pad <pad> and a chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tiny_tokenizer_json),
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer
