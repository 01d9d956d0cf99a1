"""Output token accounting on rows shaped like a batched generate returns them."""

from __future__ import annotations

import pytest

from lem.workload.tokens import count_output_tokens

EOS = 1
PAD = 2


def test_padded_batch_with_early_eos() -> None:
    # Rows of one batch of 6 new tokens: finished rows are padded after their EOS.
    batch = [
        [5, 6, EOS, PAD, PAD, PAD],  # stopped after 3 tokens, EOS included
        [5, 6, 7, 8, 9, 10],  # ran to the limit
        [EOS, PAD, PAD, PAD, PAD, PAD],  # stopped at once
        [5, 6, 7, 8, 9, EOS],  # EOS as the last allowed token is still a stop
    ]
    counts = [count_output_tokens(row, {EOS}, ignore_eos=False, pad_token_id=PAD) for row in batch]
    assert counts == [(3, "stop"), (6, "length"), (1, "stop"), (6, "stop")]


def test_pad_equal_to_eos_counts_only_the_first_eos() -> None:
    batch = [[5, 6, EOS, EOS, EOS], [5, 6, 7, 8, 9]]
    counts = [count_output_tokens(row, {EOS}, ignore_eos=False, pad_token_id=EOS) for row in batch]
    assert counts == [(3, "stop"), (5, "length")]


def test_any_of_several_eos_ids_stops() -> None:
    end_of_turn = 9
    assert count_output_tokens([5, end_of_turn, EOS, PAD], {EOS, end_of_turn}, ignore_eos=False) == (2, "stop")
    assert count_output_tokens((5, 6, EOS), frozenset({EOS, end_of_turn}), ignore_eos=False) == (3, "stop")


def test_ignore_eos_counts_every_generated_token() -> None:
    # The engine was told to ignore EOS: an EOS id in the middle is an ordinary generated token.
    assert count_output_tokens([5, EOS, 6, EOS, 7], {EOS}, ignore_eos=True, pad_token_id=PAD) == (5, "length")
    assert count_output_tokens([5, EOS, 6, EOS, 7], {EOS}, ignore_eos=False, pad_token_id=PAD) == (2, "stop")


def test_trailing_pads_without_eos_mean_another_stopping_criterion() -> None:
    assert count_output_tokens([5, 6, PAD, PAD], {EOS}, ignore_eos=False, pad_token_id=PAD) == (2, "stop")
    assert count_output_tokens([5, PAD, 6, 7], {EOS}, ignore_eos=False, pad_token_id=PAD) == (4, "length")
    # Without a pad id nothing can be told apart: every token counts.
    assert count_output_tokens([5, 6, PAD, PAD], {EOS}, ignore_eos=False) == (4, "length")


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_empty_output(ignore_eos: bool) -> None:
    assert count_output_tokens([], {EOS}, ignore_eos=ignore_eos, pad_token_id=PAD) == (0, "length")


def test_no_eos_ids_known_counts_everything() -> None:
    assert count_output_tokens([5, 6, 7], set(), ignore_eos=False) == (3, "length")
