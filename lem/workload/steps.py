"""The batch the engine actually ran, step by step: collected while serving, written as
``engine_steps`` records, summarised as the mean and max running batch.

Engines fill it where they can see their own scheduler (vLLM's scheduler stats); for engines that
lem batches itself (PyTorch) or serves one request at a time (llama.cpp), the serving layer fills
it from what it handed over. Times are ``time.perf_counter`` values, converted to the run's clock
when written.
"""

from __future__ import annotations

from collections.abc import Callable

from lem.records import EngineStepsRecord


class StepLog:
    """Rows of (time, running, waiting, steps) since the last ``drain``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._rows: list[tuple[float, int, int, int]] = []

    def add(self, t: float, running: int, waiting: int, steps: int = 1) -> None:
        self._rows.append((t, int(running), int(waiting), int(steps)))

    def __len__(self) -> int:
        return len(self._rows)

    def drain(self, rel: Callable[[float], float]) -> EngineStepsRecord | None:
        """The rows so far as one record (times through ``rel`` onto the run's clock), or None if there are none."""
        if not self._rows:
            return None
        rows, self._rows = self._rows, []
        return EngineStepsRecord(
            source=self.source,
            t_s=[rel(t) for t, *_ in rows],
            running=[r for _, r, _, _ in rows],
            waiting=[w for _, _, w, _ in rows],
            steps=[s for *_, s in rows],
        )


class NullStepLog(StepLog):
    """Drops every row: warmup's steps are not the run's."""

    def __init__(self) -> None:
        super().__init__("discarded")

    def add(self, t: float, running: int, waiting: int, steps: int = 1) -> None:
        pass
