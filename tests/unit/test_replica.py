"""router.replica: power-of-two-choices and the load signal it compares."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from router.replica import choose_pow2, replica_load


def test_two_replicas_always_the_less_loaded() -> None:
    rng = np.random.default_rng(0)
    assert {choose_pow2([0, 5], rng) for _ in range(2000)} == {0}
    assert {choose_pow2([5.0, 0.5], rng) for _ in range(2000)} == {1}


def test_never_the_more_loaded_of_the_sampled_pair() -> None:
    # With 3 replicas every pair is sampled; the most loaded one can never win a comparison.
    rng = np.random.default_rng(1)
    counts = Counter(choose_pow2([1, 9, 4], rng) for _ in range(6000))
    assert counts[1] == 0
    # replica 0 wins both pairs it is in (2/3), replica 2 wins only the pair {1, 2} (1/3)
    assert counts[0] / 6000 == pytest.approx(2 / 3, abs=0.03)
    assert counts[2] / 6000 == pytest.approx(1 / 3, abs=0.03)


def test_equal_loads_are_roughly_uniform() -> None:
    rng = np.random.default_rng(2)
    n = 10_000
    counts = Counter(choose_pow2([3, 3, 3, 3], rng) for _ in range(n))
    assert sorted(counts) == [0, 1, 2, 3]
    for i in range(4):
        assert 0.2 <= counts[i] / n <= 0.3, counts


def test_two_equal_replicas_split_evenly() -> None:
    rng = np.random.default_rng(3)
    n = 10_000
    counts = Counter(choose_pow2([2, 2], rng) for _ in range(n))
    assert counts[0] / n == pytest.approx(0.5, abs=0.03)


def test_single_replica() -> None:
    assert choose_pow2([42.0], np.random.default_rng(0)) == 0


def test_no_replicas() -> None:
    with pytest.raises(ValueError, match="choose_pow2 needs at least one replica"):
        choose_pow2([], np.random.default_rng(0))


@pytest.mark.parametrize(("stats", "queue_len", "load"), [
    ({"num_ongoing": 3, "num_waiting": 2}, 10, 5.0),  # stats win over the cached queue length
    ({"num_ongoing": 3}, 10, 3.0),                      # num_waiting defaults to 0
    ({"num_ongoing": 0.5}, None, 0.5),
    ({"ewma_latency_ms": 12.0}, 7, 7.0),               # stats without num_ongoing -> queue_len
    ({}, 4, 4.0),                                       # empty stats -> queue_len
    (None, 6, 6.0),
    (None, None, 0.0),
    (None, 0, 0.0),
])
def test_replica_load(stats: dict[str, float] | None, queue_len: int | None, load: float) -> None:
    assert replica_load(stats, queue_len) == load
    assert isinstance(replica_load(stats, queue_len), float)
