"""Turn prompt texts into engine-ready requests: chat template, truncation and tokenisation, once.

Every engine receives the same ``input_ids``, so this is the only place where a prompt is
templated, cut to ``max_input_tokens`` and tokenised.

- Chat template (``model.chat_template``): ``auto`` applies the tokenizer's template when it has
  one, ``on`` requires it, ``off`` feeds the raw text. The template gets an optional system
  message (``model.system_prompt``), the user message, and the generation prompt. With ``off``
  a system prompt is prepended to the text, separated by a blank line.
- Special tokens: a rendered template already holds the model's special tokens (BOS included
  where the model wants one), so it is tokenised with ``add_special_tokens=False``; raw text is
  tokenised with ``add_special_tokens=True`` so the tokenizer adds its BOS if it uses one.
- Truncation keeps the start of the user's text and cuts its end; the template wrapper, the
  system prompt and the generation prompt stay whole. The cut text is re-rendered and
  re-tokenised as one string, so ``input_ids`` is exactly the tokenisation of ``text`` (no
  seams from splicing token lists) and is never longer than ``max_input_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from lem.config.schema import ModelConfig
from lem.config.types import ChatTemplate
from lem.errors import ConfigError, LemError
from lem.workload.types import PreparedRequest, Prompt


@dataclass(frozen=True)
class _Wrapper:
    """How user content becomes the model's prompt text, and how that text is tokenised."""

    render: Callable[[str], str]
    add_special_tokens: bool


def prepare_requests(
    prompts: Sequence[Prompt], tokenizer: Any, model: ModelConfig, max_input_tokens: int
) -> list[PreparedRequest]:
    """Template, truncate and tokenise every prompt; one PreparedRequest per prompt, same order."""
    if max_input_tokens < 1:
        raise ConfigError("dataset.max_input_tokens", max_input_tokens, "a number >= 1")
    wrapper = _make_wrapper(tokenizer, model)
    wrapper_tokens = len(_encode(tokenizer, [wrapper.render("")], wrapper.add_special_tokens)[0])
    if wrapper_tokens >= max_input_tokens:
        raise ConfigError(
            "dataset.max_input_tokens",
            max_input_tokens,
            f"at least {wrapper_tokens + 1}: the chat template and system prompt alone take {wrapper_tokens} tokens",
        )
    texts = [wrapper.render(p.text) for p in prompts]
    all_ids = _encode(tokenizer, texts, wrapper.add_special_tokens)  # one batched call for the common case
    too_long = [i for i, ids in enumerate(all_ids) if len(ids) > max_input_tokens]
    cut = _truncate([prompts[i].text for i in too_long], wrapper, tokenizer, max_input_tokens, wrapper_tokens)
    for i, (text, ids) in zip(too_long, cut, strict=True):
        texts[i], all_ids[i] = text, ids
    truncated = set(too_long)
    return [
        PreparedRequest(p.request_id, tuple(ids), text, i in truncated)
        for i, (p, text, ids) in enumerate(zip(prompts, texts, all_ids, strict=True))
    ]


def uses_chat_template(tokenizer: Any, mode: ChatTemplate) -> bool:
    """Whether ``model.chat_template=mode`` applies the template with this tokenizer."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode is ChatTemplate.off:
        return False
    if mode is ChatTemplate.on and not has_template:
        raise ConfigError("model.chat_template", "on", "auto or off: this tokenizer has no chat template")
    return has_template


def _make_wrapper(tokenizer: Any, model: ModelConfig) -> _Wrapper:
    system_prompt = model.system_prompt
    if not uses_chat_template(tokenizer, model.chat_template):
        prefix = f"{system_prompt}\n\n" if system_prompt else ""
        return _Wrapper(render=lambda content: prefix + content, add_special_tokens=True)

    def render(content: str) -> str:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": content})
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja raises its own errors, e.g. templates that refuse a system role
            if system_prompt:
                allowed = f"null: this model's chat template failed with it ({exc})"
                raise ConfigError("model.system_prompt", system_prompt, allowed) from None
            raise LemError(f"the chat template failed to render a prompt ({exc}); try model.chat_template=off") from None

    return _Wrapper(render=render, add_special_tokens=False)


def _encode(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"])


def _truncate(
    contents: list[str], wrapper: _Wrapper, tokenizer: Any, max_input_tokens: int, wrapper_tokens: int
) -> list[tuple[str, list[int]]]:
    """For each content, the rendered prompt of its longest start that fits in max_input_tokens."""
    if not contents:
        return []
    if getattr(tokenizer, "is_fast", False):
        return _truncate_by_offsets(contents, wrapper, tokenizer, max_input_tokens, wrapper_tokens)
    return [_truncate_by_search(content, wrapper, tokenizer, max_input_tokens) for content in contents]


def _truncate_by_offsets(
    contents: list[str], wrapper: _Wrapper, tokenizer: Any, max_input_tokens: int, wrapper_tokens: int
) -> list[tuple[str, list[int]]]:
    """Cut each content after its k-th token (character offsets), re-render, shrink k until it fits.

    Batched: every round tokenises all still-too-long prompts in one call.
    """
    offsets = tokenizer(contents, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    n_kept = [min(len(o), max_input_tokens - wrapper_tokens) for o in offsets]
    done: list[tuple[str, list[int]] | None] = [None] * len(contents)
    pending = list(range(len(contents)))
    while pending:
        texts = [wrapper.render(contents[j][: _end_char(offsets[j], n_kept[j])]) for j in pending]
        still_long = []
        for j, text, ids in zip(pending, texts, _encode(tokenizer, texts, wrapper.add_special_tokens)):
            excess_tokens = len(ids) - max_input_tokens
            if excess_tokens <= 0:
                done[j] = (text, ids)
            else:
                # Tokens can merge across the seams with the template; drop the excess and retry.
                n_kept[j] = max(0, n_kept[j] - excess_tokens)  # terminates: 0 kept renders the bare wrapper, which fits
                still_long.append(j)
        pending = still_long
    return [item for item in done if item is not None]


def _end_char(offsets: Sequence[tuple[int, int]], n_tokens: int) -> int:
    """Character index just after the n-th token of the content (0 for none)."""
    return offsets[n_tokens - 1][1] if n_tokens > 0 else 0


def _truncate_by_search(content: str, wrapper: _Wrapper, tokenizer: Any, max_input_tokens: int) -> tuple[str, list[int]]:
    """For tokenizers without offsets: binary search on the number of characters kept."""
    low, high = 0, len(content)
    best_text = wrapper.render("")
    best_ids = _encode(tokenizer, [best_text], wrapper.add_special_tokens)[0]
    while low < high:
        mid = (low + high + 1) // 2
        text = wrapper.render(content[:mid])
        ids = _encode(tokenizer, [text], wrapper.add_special_tokens)[0]
        if len(ids) <= max_input_tokens:
            low, best_text, best_ids = mid, text, ids
        else:
            high = mid - 1
    return best_text, best_ids
