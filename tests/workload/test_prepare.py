"""Chat template, one-time truncation and tokenisation: what every engine receives."""

from __future__ import annotations

from typing import Any

import pytest

from lem.config.schema import ModelConfig
from lem.config.types import ChatTemplate
from lem.errors import ConfigError
from lem.workload.builtin_prompts import builtin_prompts
from lem.workload.prepare import prepare_requests
from lem.workload.types import Prompt

GENERATION_PROMPT = "<|im_start|>assistant\n"


def prompts_of(*texts: str) -> list[Prompt]:
    return [Prompt(request_id=10 + i, text=t) for i, t in enumerate(texts)]


def encode(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def without_template(tokenizer: Any) -> Any:
    tokenizer.chat_template = None
    return tokenizer


class SlowTokenizer:
    """The fixture tokenizer seen as a tokenizer without offset mappings (is_fast=False)."""

    is_fast = False

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError("slow tokenizers have no offsets")
        return self._inner(*args, **kwargs)


# --- chat template ------------------------------------------------------------------------------


def test_auto_applies_the_template_with_one_bos(tiny_tokenizer: Any) -> None:
    (request,) = prepare_requests(prompts_of("Why is the sky blue?"), tiny_tokenizer, ModelConfig(), 512)
    assert request.text == "<s><|im_start|>user\nWhy is the sky blue?<|im_end|>\n" + GENERATION_PROMPT
    assert list(request.input_ids) == encode(tiny_tokenizer, request.text, add_special_tokens=False)
    assert request.input_ids.count(tiny_tokenizer.bos_token_id) == 1 and request.input_ids[0] == tiny_tokenizer.bos_token_id
    assert request.request_id == 10 and not request.truncated


def test_system_prompt_goes_into_the_template(tiny_tokenizer: Any) -> None:
    (request,) = prepare_requests(prompts_of("Hi"), tiny_tokenizer, ModelConfig(system_prompt="Be brief."), 512)
    assert request.text.startswith("<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>")


def test_off_feeds_raw_text_and_the_tokenizer_adds_its_bos(tiny_tokenizer: Any) -> None:
    (request,) = prepare_requests(prompts_of("Why is the sky blue?"), tiny_tokenizer, ModelConfig(chat_template=ChatTemplate.off), 512)
    assert request.text == "Why is the sky blue?"
    assert list(request.input_ids) == encode(tiny_tokenizer, "Why is the sky blue?", add_special_tokens=True)
    assert request.input_ids.count(tiny_tokenizer.bos_token_id) == 1


def test_off_prepends_the_system_prompt(tiny_tokenizer: Any) -> None:
    model = ModelConfig(chat_template=ChatTemplate.off, system_prompt="Be brief.")
    (request,) = prepare_requests(prompts_of("Hi"), tiny_tokenizer, model, 512)
    assert request.text == "Be brief.\n\nHi"


def test_auto_without_a_template_feeds_raw_text(tiny_tokenizer: Any) -> None:
    (request,) = prepare_requests(prompts_of("Hello"), without_template(tiny_tokenizer), ModelConfig(), 512)
    assert request.text == "Hello"


def test_on_without_a_template_is_a_config_error(tiny_tokenizer: Any) -> None:
    model = ModelConfig(chat_template=ChatTemplate.on)
    with pytest.raises(ConfigError) as info:
        prepare_requests(prompts_of("Hello"), without_template(tiny_tokenizer), model, 512)
    assert str(info.value) == "model.chat_template=on: expected auto or off: this tokenizer has no chat template"


# --- truncation ---------------------------------------------------------------------------------


def test_long_prompt_is_cut_at_the_end_of_its_text_keeping_the_wrapper(tiny_tokenizer: Any) -> None:
    long_text = builtin_prompts()[2]  # a reading task, hundreds of tokens
    (request,) = prepare_requests(prompts_of(long_text), tiny_tokenizer, ModelConfig(), 40)
    assert request.truncated
    assert request.input_tokens <= 40
    assert request.input_tokens >= 38  # the budget is used, not thrown away
    assert list(request.input_ids) == encode(tiny_tokenizer, request.text, add_special_tokens=False)
    prefix = "<s><|im_start|>user\n"
    assert request.text.startswith(prefix)
    assert request.text.endswith("<|im_end|>\n" + GENERATION_PROMPT)
    kept = request.text[len(prefix) : -len("<|im_end|>\n" + GENERATION_PROMPT)]
    assert kept and long_text.startswith(kept)
    generation_ids = encode(tiny_tokenizer, GENERATION_PROMPT, add_special_tokens=False)
    assert list(request.input_ids[-len(generation_ids) :]) == generation_ids


@pytest.mark.parametrize("max_input_tokens", [32, 47, 96, 200])
@pytest.mark.parametrize("chat_template", [ChatTemplate.auto, ChatTemplate.off])
@pytest.mark.parametrize("system_prompt", [None, "Be brief."])
def test_every_builtin_prompt_fits_and_ids_match_text(
    tiny_tokenizer: Any, max_input_tokens: int, chat_template: ChatTemplate, system_prompt: str | None
) -> None:
    prompts = [Prompt(i, t) for i, t in enumerate(builtin_prompts())]
    model = ModelConfig(chat_template=chat_template, system_prompt=system_prompt)
    requests = prepare_requests(prompts, tiny_tokenizer, model, max_input_tokens)
    templated = chat_template is ChatTemplate.auto
    generation_ids = encode(tiny_tokenizer, GENERATION_PROMPT, add_special_tokens=False)
    assert [r.request_id for r in requests] == list(range(len(prompts)))
    assert any(r.truncated for r in requests)
    for request in requests:
        assert request.input_tokens <= max_input_tokens
        assert list(request.input_ids) == encode(tiny_tokenizer, request.text, add_special_tokens=not templated)
        assert request.input_ids.count(tiny_tokenizer.bos_token_id) == 1
        if templated:
            assert list(request.input_ids[-len(generation_ids) :]) == generation_ids


def test_short_prompts_are_untouched_next_to_long_ones(tiny_tokenizer: Any) -> None:
    short, long_text = "Hi there", " ".join(builtin_prompts()[:6])
    requests = prepare_requests(prompts_of(short, long_text), tiny_tokenizer, ModelConfig(), 60)
    assert not requests[0].truncated and "Hi there" in requests[0].text
    assert requests[1].truncated and requests[1].input_tokens <= 60


def test_tokenizer_without_offsets_truncates_the_same_way(tiny_tokenizer: Any) -> None:
    prompts = [Prompt(i, t) for i, t in enumerate(builtin_prompts()[:40])]
    fast = prepare_requests(prompts, tiny_tokenizer, ModelConfig(), 48)
    slow = prepare_requests(prompts, SlowTokenizer(tiny_tokenizer), ModelConfig(), 48)
    for f, s in zip(fast, slow, strict=True):
        assert s.input_tokens <= 48 and s.truncated == f.truncated
        assert list(s.input_ids) == encode(tiny_tokenizer, s.text, add_special_tokens=False)
        assert abs(s.input_tokens - f.input_tokens) <= 2  # both use (almost) the whole budget


def test_limit_below_the_template_itself_is_a_config_error(tiny_tokenizer: Any) -> None:
    wrapper_tokens = len(encode(tiny_tokenizer, "<s><|im_start|>user\n<|im_end|>\n" + GENERATION_PROMPT, False))
    with pytest.raises(ConfigError) as info:
        prepare_requests(prompts_of("Hello"), tiny_tokenizer, ModelConfig(), wrapper_tokens)
    assert info.value.key == "dataset.max_input_tokens"
    assert f"alone take {wrapper_tokens} tokens" in str(info.value)
    (request,) = prepare_requests(prompts_of("Hello"), tiny_tokenizer, ModelConfig(), wrapper_tokens + 1)
    assert request.input_tokens == wrapper_tokens + 1 and request.truncated


def test_many_prompts_in_one_call(tiny_tokenizer: Any) -> None:
    prompts = [Prompt(i, t) for i, t in enumerate(builtin_prompts() * 8)]  # about 3,000 requests
    requests = prepare_requests(prompts, tiny_tokenizer, ModelConfig(), 128)
    assert len(requests) == len(prompts)
    assert max(r.input_tokens for r in requests) <= 128


class MergingTokenizer:
    """Characters are tokens except "ab", which merges into one.

    Its template "a{content}b" costs 1 token empty but 2 + len(content) tokens around any
    content: the wrapper's merge breaks at the seam, so a first cut sized from the empty
    wrapper overshoots and must be shrunk.
    """

    chat_template = "a{content}b"

    def __init__(self, is_fast: bool) -> None:
        self.is_fast = is_fast

    @staticmethod
    def _spans(text: str) -> list[tuple[int, int]]:
        spans, i = [], 0
        while i < len(text):
            width = 2 if text.startswith("ab", i) else 1
            spans.append((i, i + width))
            i += width
        return spans

    def __call__(self, texts: str | list[str], add_special_tokens: bool = True, return_offsets_mapping: bool = False) -> dict:
        batch = [texts] if isinstance(texts, str) else texts
        spans = [self._spans(text) for text in batch]
        ids = [[0 if text[s:e] == "ab" else ord(text[s]) for s, e in sp] for text, sp in zip(batch, spans)]
        result: dict = {"input_ids": ids[0] if isinstance(texts, str) else ids}
        if return_offsets_mapping:
            result["offset_mapping"] = spans[0] if isinstance(texts, str) else spans
        return result

    def apply_chat_template(self, messages: list[dict], tokenize: bool, add_generation_prompt: bool) -> str:
        return "a" + messages[-1]["content"] + "b"


@pytest.mark.parametrize("is_fast", [True, False])
def test_cut_that_overshoots_at_the_template_seam_is_shrunk(is_fast: bool) -> None:
    (request,) = prepare_requests(prompts_of("x" * 20), MergingTokenizer(is_fast), ModelConfig(), 10)
    assert request.text == "a" + "x" * 8 + "b"  # 10 tokens: the first guess of 9 x's made 11
    assert request.input_tokens == 10 and request.truncated


def test_template_that_refuses_a_system_role_names_the_system_prompt(tiny_tokenizer: Any) -> None:
    tiny_tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    assert prepare_requests(prompts_of("Hi"), tiny_tokenizer, ModelConfig(), 64)[0].text == "Hi"
    with pytest.raises(ConfigError, match="model.system_prompt=Be brief.: expected null: .*System role not supported"):
        prepare_requests(prompts_of("Hi"), tiny_tokenizer, ModelConfig(system_prompt="Be brief."), 64)
