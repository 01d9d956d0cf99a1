"""The order a study's runs happen in: configurations × cycles laid out in time, reproducibly from a seed.

Slow drift — a GPU warming up over an hour, clocks, another tenant's load — biases a comparison
when it lines up with the configurations. ``grouped`` runs each configuration's cycles back to
back in one job (one engine load, the fastest); the others run every cycle as its own job, so a
configuration's cycles are spread across the study:

- ``interleaved``: round r runs cycle r of every configuration, in the sweep's order.
- ``shuffled``: every (configuration, cycle) in a random order drawn from ``study.seed``.
- ``latin_square``: round r runs the configurations in the order of row r of a Williams square
  (its labels permuted by ``study.seed``): over n rounds (2n for an odd n) every configuration
  holds every position equally often and follows every other configuration equally often, so
  neither drift nor the previous run's heat favours one of them.

Each configuration's cycles are numbered 0, 1, ... in the order they run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lem.config.types import StudyOrder


@dataclass(frozen=True)
class Visit:
    """One job of the study: configuration ``point`` (its index among the runnable points), at ``position``."""

    position: int  # 0-based place in the study; also the job's folder name and Hydra job number
    point: int
    cycle: int | None  # which of the configuration's cycles; None: all of them, back to back (grouped)
    round: int  # grouped: 0; else the round of cycles this visit belongs to
    job: int = -1  # the job's number and folder name: its point's index (grouped), else its position

    @property
    def spread(self) -> bool:
        """One cycle of its configuration (the cycles are spread across the study), not all of them."""
        return self.cycle is not None


def williams_rows(n: int) -> list[list[int]]:
    """A Williams design for ``n`` treatments: n rows for an even n, 2n for an odd n (each row a permutation)."""
    if n <= 0:
        return []
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(x + k) % n for x in first] for k in range(n)]
    if n % 2:
        rows += [list(reversed(row)) for row in rows]
    return rows


def order_visits(cycles: list[int], order: StudyOrder, seed: int = 0) -> list[Visit]:
    """The study's visits for configurations with ``cycles[i]`` cycles each, in the order they run."""
    n = len(cycles)
    if order is StudyOrder.grouped:
        return [Visit(position=i, point=i, cycle=None, round=0) for i in range(n)]
    rounds = max(cycles, default=0)
    slots: list[tuple[int, int]] = []  # (point, round)
    if order is StudyOrder.interleaved:
        slots = [(i, r) for r in range(rounds) for i in range(n) if r < cycles[i]]
    elif order is StudyOrder.shuffled:
        slots = [(i, r) for r in range(rounds) for i in range(n) if r < cycles[i]]
        random.Random(seed).shuffle(slots)
    elif order is StudyOrder.latin_square:
        labels = list(range(n))
        random.Random(seed).shuffle(labels)
        rows = williams_rows(n)
        slots = [(labels[x], r) for r in range(rounds) for x in rows[r % len(rows)] if r < cycles[labels[x]]]
    else:  # pragma: no cover - the enum is closed
        raise ValueError(f"unknown study order {order}")
    seen: dict[int, int] = {}
    visits = []
    for position, (point, r) in enumerate(slots):
        cycle = seen.get(point, 0)
        seen[point] = cycle + 1
        # shuffled has no rounds of its own: every n runs count as one, for study.cycle_gap_s
        visits.append(Visit(position=position, point=point, cycle=cycle, round=r if order is not StudyOrder.shuffled else position // max(n, 1)))
    return visits
