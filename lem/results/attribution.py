"""Energy per request: a window's energy split among the requests that worked in it, by their work.

Engine-independent: it needs only what every engine records — each request's arrival, start,
token times and end (``RequestRecord``) — and an energy timeline. Each request is cut into
*work items*: its prefill (start → first token) and one decode step per later token (the
previous distinct token time → this one). An item's work (its FLOPs, from the model's
``ForwardCost``: the prefill of its own input tokens, each decode step at its own context length;
or its token count where FLOPs are unknown) is spread evenly over its span. The window is cut
at every item boundary; the energy of each slice goes to the items active in it in proportion
to their work per second in that slice. Slices in which nothing computed (lem's own overhead
between batches, queueing) go in equal shares to the requests in the system then (arrived, not
finished): their *waiting* energy. Slices with no request in the system are *unattributed*.
Per request, prefill + decode + waiting energies, summed over requests, plus the unattributed
energy, equal the window's energy (up to floating-point rounding; ``residual_j`` records it).

Everything is vectorised with prefix sums: O((items + slices) log) for runs of millions of tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PREFILL, DECODE = 0, 1
WEIGHT_FLOPS = "flops"  # each item weighted by its FLOPs (lem's ForwardCost of the model)
WEIGHT_TOKENS = "tokens"  # no FLOPs model: a prefill weighs its input tokens, a decode step one token


@dataclass(frozen=True)
class WorkItems:
    """Every request's prefill and decode steps: columns aligned on one item each."""

    request: np.ndarray  # index into the request list
    kind: np.ndarray  # PREFILL or DECODE
    start_s: np.ndarray
    end_s: np.ndarray
    weight: np.ndarray  # FLOPs, or tokens (see ``weighting``)
    weighting: str  # WEIGHT_FLOPS | WEIGHT_TOKENS


@dataclass(frozen=True)
class Split:
    """One energy channel split among requests (arrays indexed like the request list), joules."""

    prefill_j: np.ndarray
    decode_j: np.ndarray
    waiting_j: np.ndarray
    unattributed_j: float  # slices with no request in the system
    total_j: float  # the energy that was split (sum over slices)

    @property
    def request_j(self) -> np.ndarray:
        return self.prefill_j + self.decode_j + self.waiting_j

    @property
    def residual_j(self) -> float:
        """What the split failed to place: total − (every request + unattributed); rounding only."""
        return float(self.total_j - self.request_j.sum() - self.unattributed_j)

    def __add__(self, other: Split) -> Split:
        return Split(
            self.prefill_j + other.prefill_j, self.decode_j + other.decode_j, self.waiting_j + other.waiting_j,
            self.unattributed_j + other.unattributed_j, self.total_j + other.total_j,
        )

    def scaled(self, factor: float) -> Split:
        return Split(self.prefill_j * factor, self.decode_j * factor, self.waiting_j * factor,
                     self.unattributed_j * factor, self.total_j * factor)


def item_flops(cost: Mapping[str, float] | None) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None:
    """FLOPs of items from a ForwardCost dict: ``f(kind, input_tokens, step)``; step k ≥ 1 is the k-th decode step."""
    if not cost or any(cost.get(k) is None for k in ("per_token_flops", "per_query_key_flops", "per_logit_flops")):
        return None
    per_token, per_qk, per_logit = (float(cost[k]) for k in ("per_token_flops", "per_query_key_flops", "per_logit_flops"))

    def flops(kind: np.ndarray, input_tokens: np.ndarray, step: np.ndarray) -> np.ndarray:
        n = input_tokens.astype(float)
        prefill = per_token * n + per_qk * n * (n + 1) / 2 + per_logit  # causal: key j ≤ query i
        decode = per_token + per_qk * (n + step) + per_logit  # one new token over its cache and itself
        return np.where(kind == PREFILL, prefill, decode)

    return flops


def work_items(requests: Sequence[Mapping[str, Any]], cost: Mapping[str, float] | None = None) -> WorkItems:
    """The prefill and decode steps of ``requests`` (request records as dicts)."""
    flops = item_flops(cost)
    cols: dict[str, list[Any]] = {"request": [], "kind": [], "start": [], "end": [], "n_in": [], "step": []}
    for i, r in enumerate(requests):
        times = [float(t) for t in r.get("token_times_s") or []]
        if not times and r.get("first_token_s") is not None:
            times = [float(r["first_token_s"])]
        if not times:
            continue
        start = float(r["start_s"])
        n_in = int(r["input_tokens"])
        distinct = np.unique(np.asarray(times))
        # A token that arrived in the same chunk as earlier ones shares that chunk's span.
        prev = np.searchsorted(distinct, times, side="left") - 1
        begins = np.where(prev >= 0, distinct[np.maximum(prev, 0)], start)
        begins[0] = min(start, times[0])
        n = len(times)
        cols["request"] += [i] * n
        cols["kind"] += [PREFILL] + [DECODE] * (n - 1)
        cols["start"] += begins.tolist()
        cols["end"] += times
        cols["n_in"] += [n_in] * n
        cols["step"] += list(range(n))
    kind = np.asarray(cols["kind"], dtype=int)
    n_in = np.asarray(cols["n_in"], dtype=int)
    step = np.asarray(cols["step"], dtype=int)
    if flops is not None:
        weight, weighting = flops(kind, n_in, step), WEIGHT_FLOPS
    else:
        weight, weighting = np.where(kind == PREFILL, n_in, 1).astype(float), WEIGHT_TOKENS
    return WorkItems(
        request=np.asarray(cols["request"], dtype=int), kind=kind, start_s=np.asarray(cols["start"], dtype=float),
        end_s=np.asarray(cols["end"], dtype=float), weight=weight, weighting=weighting,
    )


def slice_edges(items: WorkItems, requests: Sequence[Mapping[str, Any]], window: tuple[float, float]) -> np.ndarray:
    """Every time at which some item or request starts or ends, inside the window, with its ends."""
    a, b = window
    times = np.concatenate([
        items.start_s, items.end_s,
        np.asarray([float(r["arrival_s"]) for r in requests] + [float(r["end_s"]) for r in requests], dtype=float),
        np.asarray([a, b], dtype=float),
    ])
    return np.unique(np.clip(times, a, b))


class SlicePlan:
    """How the slices between ``edges`` divide among the items and requests: everything the split needs
    that does not depend on the energy, computed once and applied to every device's energy (and idle)."""

    def __init__(self, items: WorkItems, requests: Sequence[Mapping[str, Any]], edges: np.ndarray) -> None:
        self.items, self.n_req, self.n_slices = items, len(requests), len(edges) - 1
        if self.n_slices <= 0:
            return
        # Items: clip to the window; a point item (no span) takes the slice that ends at its time.
        lo = np.searchsorted(edges, np.clip(items.start_s, edges[0], edges[-1]), side="left")
        hi = np.searchsorted(edges, np.clip(items.end_s, edges[0], edges[-1]), side="left")
        point = hi <= lo
        self.lo = np.where(point, np.maximum(hi - 1, 0), lo)
        self.hi = np.where(point, np.maximum(hi, 1), hi)
        span_s = edges[self.hi] - edges[self.lo]
        self.density = np.divide(items.weight, span_s, out=np.zeros_like(span_s), where=span_s > 0)  # work per second

        # Total work per second in each slice (difference array).
        work_rate = np.zeros(self.n_slices + 1)
        np.add.at(work_rate, self.lo, self.density)
        np.add.at(work_rate, self.hi, -self.density)
        work_rate = np.cumsum(work_rate)[: self.n_slices]
        active = np.zeros(self.n_slices + 1, dtype=np.int64)  # exact counts: which slices had any item at work
        np.add.at(active, self.lo, 1)
        np.add.at(active, self.hi, -1)
        self.busy = (np.cumsum(active)[: self.n_slices] > 0) & (work_rate > 0)
        self.dt = np.diff(edges)
        self.work_j_denominator = work_rate * self.dt  # a slice's energy per unit of work = its energy / this
        self.usable = self.busy & (self.dt > 0)

        # Requests in the system (arrived, not yet finished) in each slice, for the idle slices.
        self.arrive = np.searchsorted(edges, np.clip([float(r["arrival_s"]) for r in requests], edges[0], edges[-1]), side="left")
        leave = np.searchsorted(edges, np.clip([float(r["end_s"]) for r in requests], edges[0], edges[-1]), side="left")
        self.leave = np.maximum(leave, self.arrive)
        present = np.zeros(self.n_slices + 1)
        np.add.at(present, self.arrive, 1.0)
        np.add.at(present, leave, -1.0)
        self.present = np.cumsum(present)[: self.n_slices]
        idle = ~self.busy
        self.shared = idle & (self.present > 0.5)
        self.unattributed = idle & (self.present <= 0.5)

    def split(self, slice_energy_j: np.ndarray) -> Split:
        """Split ``slice_energy_j`` (one value per slice) among the requests."""
        zeros = np.zeros(self.n_req)
        if self.n_slices <= 0:
            return Split(zeros, zeros.copy(), zeros.copy(), 0.0, 0.0)
        energy = np.asarray(slice_energy_j, dtype=float)
        items = self.items
        per_work = np.divide(energy, self.work_j_denominator, out=np.zeros(self.n_slices), where=self.usable)
        prefix = np.concatenate([[0.0], np.cumsum(per_work * self.dt)])
        item_j = self.density * (prefix[self.hi] - prefix[self.lo])
        prefill = np.bincount(items.request[items.kind == PREFILL], item_j[items.kind == PREFILL], minlength=self.n_req)
        decode = np.bincount(items.request[items.kind == DECODE], item_j[items.kind == DECODE], minlength=self.n_req)

        # Idle slices: equal shares among the requests in the system.
        share = np.divide(energy, self.present, out=np.zeros(self.n_slices), where=self.shared)
        share_prefix = np.concatenate([[0.0], np.cumsum(share)])
        waiting = share_prefix[self.leave] - share_prefix[self.arrive]
        unattributed = float(energy[self.unattributed].sum())
        return Split(prefill, decode, waiting, unattributed, float(energy.sum()))


def split_energy(
    items: WorkItems,
    requests: Sequence[Mapping[str, Any]],
    edges: np.ndarray,
    slice_energy_j: np.ndarray,
) -> Split:
    """Split ``slice_energy_j`` (one value per slice between consecutive ``edges``) among the requests."""
    return SlicePlan(items, requests, edges).split(slice_energy_j)


def decode_batch_sizes(items: WorkItems) -> np.ndarray:
    """For each decode item: how many decode items were in flight when it completed (its batch)."""
    dec = items.kind == DECODE
    if not dec.any():
        return np.zeros(0)
    starts, ends = np.sort(items.start_s[dec]), np.sort(items.end_s[dec])
    t = items.end_s[dec]
    # Items with start < t ≤ end: started before t, not yet ended strictly before t.
    in_flight = np.searchsorted(starts, t, side="left") - np.searchsorted(ends, t, side="left")
    return np.maximum(in_flight, 1).astype(float)  # an item with no span still ran in its own batch
