"""Arrival schedules: when each request reaches the server, relative to generation start.

``offline``: every request is there at t = 0. ``constant``: one every 1/target_qps s.
``poisson``: gamma-distributed gaps with mean 1/target_qps, as in vLLM's serving benchmark:
shape = burstiness (1.0 is a Poisson process; < 1 burstier, > 1 more regular). The first
request arrives at t = 0. Seeded, so a schedule is reproducible.
"""

from __future__ import annotations

from lem.config.schema import TrafficConfig
from lem.config.types import ArrivalProcess


def arrival_offsets_s(n_requests: int, traffic: TrafficConfig) -> list[float]:
    if n_requests <= 0:
        return []
    if traffic.arrival is ArrivalProcess.offline:
        return [0.0] * n_requests
    assert traffic.target_qps is not None and traffic.target_qps > 0  # validate() guarantees it
    mean_gap_s = 1.0 / traffic.target_qps
    if traffic.arrival is ArrivalProcess.constant:
        return [i * mean_gap_s for i in range(n_requests)]

    import numpy as np

    rng = np.random.default_rng(traffic.seed)
    shape = traffic.burstiness
    gaps_s = rng.gamma(shape=shape, scale=mean_gap_s / shape, size=n_requests - 1)
    offsets = np.concatenate([[0.0], np.cumsum(gaps_s)])
    return [float(t) for t in offsets]

