"""Replica choice: power-of-two-choices over a load signal (the fallback every later policy keeps).

Sample two distinct replicas uniformly, send to the less loaded; ties go to a random one of the pair
so no replica is favoured by its position in the list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def replica_load(stats: Mapping[str, Any] | None, queue_len: int | None) -> float:
    """Load from the replica's reported stats, else the router's cached queue length, else 0."""
    if stats and "num_ongoing" in stats:
        return float(stats["num_ongoing"]) + float(stats.get("num_waiting", 0))
    return float(queue_len or 0)


def choose_pow2(loads: Sequence[float], rng: np.random.Generator) -> int:
    n = len(loads)
    if n == 0:
        raise ValueError("choose_pow2 needs at least one replica")
    if n == 1:
        return 0
    a, b = (int(i) for i in rng.choice(n, size=2, replace=False))
    if loads[a] == loads[b]:
        return a if rng.random() < 0.5 else b
    return a if loads[a] < loads[b] else b
