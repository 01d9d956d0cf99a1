"""The order of a study's runs: reproducible from the seed, and balanced the way each order promises."""

from __future__ import annotations

from collections import Counter

import pytest

from lem.config.types import StudyOrder
from lem.study.order import order_visits, williams_rows


def sequence(cycles: list[int], order: StudyOrder, seed: int = 0) -> list[tuple[int, int | None]]:
    return [(v.point, v.cycle) for v in order_visits(cycles, order, seed)]


def test_grouped_runs_each_configuration_once_with_all_its_cycles() -> None:
    visits = order_visits([3, 3, 3], StudyOrder.grouped)
    assert [(v.point, v.cycle, v.position) for v in visits] == [(0, None, 0), (1, None, 1), (2, None, 2)]


def test_interleaved_runs_round_after_round() -> None:
    assert sequence([2, 2, 2], StudyOrder.interleaved) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    assert [v.round for v in order_visits([2, 2], StudyOrder.interleaved)] == [0, 0, 1, 1]


@pytest.mark.parametrize("order", [StudyOrder.shuffled, StudyOrder.latin_square])
def test_a_seeded_order_is_reproducible_and_the_seed_changes_it(order: StudyOrder) -> None:
    a, b = sequence([3] * 4, order, seed=7), sequence([3] * 4, order, seed=7)
    assert a == b
    assert any(sequence([3] * 4, order, seed=s) != a for s in range(1, 6))
    # every configuration runs each of its cycles exactly once, numbered in the order they run
    assert Counter(p for p, _ in a) == {0: 3, 1: 3, 2: 3, 3: 3}
    for point in range(4):
        assert [c for p, c in a if p == point] == [0, 1, 2]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_a_williams_square_puts_every_configuration_in_every_position_and_after_every_other(n: int) -> None:
    rows = williams_rows(n)
    assert len(rows) == (n if n % 2 == 0 else 2 * n)
    for row in rows:
        assert sorted(row) == list(range(n))
    for position in range(n):  # each column holds every treatment equally often
        assert Counter(row[position] for row in rows) == {t: len(rows) // n for t in range(n)}
    pairs = Counter((row[i], row[i + 1]) for row in rows for i in range(n - 1))
    assert set(pairs.values()) == {len(rows) // n}  # each ordered pair of neighbours equally often (carry-over balance)
    assert len(pairs) == n * (n - 1)


def test_latin_square_over_n_rounds_gives_each_configuration_each_position() -> None:
    visits = order_visits([4] * 4, StudyOrder.latin_square, seed=3)
    by_round: dict[int, list[int]] = {}
    for v in visits:
        by_round.setdefault(v.round, []).append(v.point)
    assert len(by_round) == 4
    for position in range(4):
        assert sorted(by_round[r][position] for r in range(4)) == [0, 1, 2, 3]


def test_configurations_with_fewer_cycles_drop_out_of_later_rounds() -> None:
    assert sequence([1, 3], StudyOrder.interleaved) == [(0, 0), (1, 0), (1, 1), (1, 2)]
