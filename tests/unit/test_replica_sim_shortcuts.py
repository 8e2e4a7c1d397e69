"""The simulator's trace shortcuts (``block_reuse`` -> ``ReplicaEngine.submit``'s ``fresh_from`` and
``dead_from``) must change no outcome: every time, hit and telemetry row bit-identical without them."""

from __future__ import annotations

import random

import numpy as np
import pytest

import training.replica_sim as replica_sim
from router.replica import make_policy
from training.engine import EngineConfig
from training.replica_sim import Trace, block_reuse, simulate


def reference_reuse(prefix_hashes: tuple[tuple[int, ...], ...]) -> tuple[list[int], list[int]]:
    """``block_reuse`` by its definition, one block at a time."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, hs in enumerate(prefix_hashes):
        for h in hs:
            first.setdefault(h, i)
            last[h] = i
    fresh, dead = [], []
    for i, hs in enumerate(prefix_hashes):
        p = q = len(hs)
        while p and first[hs[p - 1]] == i:
            p -= 1
        if len(set(hs)) == len(hs):
            while q and last[hs[q - 1]] == i:
                q -= 1
        fresh.append(p)
        dead.append(q)
    return fresh, dead


def random_trace(seed: int, n: int = 160) -> Trace:
    """Conversations (chained block hashes that grow turn by turn) mixed with arbitrary tuples over a small
    alphabet (a hash twice in a request, shared blocks that are not prefixes, blocks that come back)."""
    rnd = random.Random(seed)
    sessions: list[list[int]] = [[] for _ in range(4)]
    hashes, n_in = [], []
    for _ in range(n):
        if rnd.random() < 0.6:
            s = sessions[rnd.randrange(len(sessions))]
            s.extend(rnd.getrandbits(40) for _ in range(rnd.randint(1, 3)))
            if len(s) > 8:
                del s[:]
            hs = tuple(s)
        else:
            hs = tuple(rnd.randrange(12) for _ in range(rnd.randint(0, 6)))
        hashes.append(hs)
        n_in.append(max(1, 512 * len(hs) - rnd.randrange(512)) if hs else rnd.randint(1, 3000))
    arrival = np.cumsum([rnd.expovariate(40.0) for _ in range(n)])
    return Trace("random", arrival - arrival[0], np.array(n_in), np.array([rnd.randint(1, 40) for _ in range(n)]),
                 tuple(hashes))


@pytest.mark.parametrize("seed", range(8))
def test_block_reuse_matches_its_definition(seed: int) -> None:
    tr = random_trace(seed)
    fresh, dead = block_reuse(tr.prefix_hashes)
    assert (fresh, dead) == reference_reuse(tr.prefix_hashes)
    assert any(f < len(h) for f, h in zip(fresh, tr.prefix_hashes))  # the shortcuts do apply
    assert any(d < len(h) for d, h in zip(dead, tr.prefix_hashes))


def test_block_reuse_edge_cases() -> None:
    assert block_reuse(((), (), ())) == ([0, 0, 0], [0, 0, 0])
    assert block_reuse(((7, 7), (7,))) == ([0, 1], [2, 0])  # a hash twice: no dead run for that request
    big = ((2**70, 1), (1,))  # beyond int64: no shortcut at all
    assert block_reuse(big) == ([2, 1], [2, 1])
    hashes = ((1, 2), (1, 3))
    assert block_reuse(hashes) is block_reuse(hashes)  # computed once per trace


def run_both(tr: Trace, policy: str, cfg: EngineConfig, monkeypatch: pytest.MonkeyPatch, telemetry: bool,
             n_replicas: int = 2) -> tuple[replica_sim.SimResult, replica_sim.SimResult]:
    fast = simulate(tr, n_replicas, make_policy(policy, seed=1), engine=cfg, telemetry=telemetry)
    with monkeypatch.context() as m:
        m.setattr(replica_sim, "block_reuse", lambda ph: ([None] * len(ph), [None] * len(ph)))
        plain = simulate(tr, n_replicas, make_policy(policy, seed=1), engine=cfg, telemetry=telemetry)
    return fast, plain


@pytest.mark.parametrize("policy", ["pow2", "round_robin", "prefix_affinity"])
def test_the_shortcuts_change_no_outcome(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hits = 0
    for seed in range(12):
        tr = random_trace(100 + seed)
        # tiny caches: evictions, partly evicted anonymous runs and hits evicted during a prefill are common
        cfg = EngineConfig(max_batch_tokens=1024, max_num_seqs=4, kv_capacity_tokens=20_000,
                           prefix_cache_blocks=1 + seed % 6)
        fast, plain = run_both(tr, policy, cfg, monkeypatch, telemetry=policy == "prefix_affinity")
        assert fast.replica.tolist() == plain.replica.tolist()
        assert fast.ttft_s.tobytes() == plain.ttft_s.tobytes() and fast.e2e_s.tobytes() == plain.e2e_s.tobytes()
        assert fast.hit_tokens == plain.hit_tokens and fast.busy_s.tobytes() == plain.busy_s.tobytes()
        if fast.telemetry is not None and plain.telemetry is not None:
            assert fast.telemetry.x.tobytes() == plain.telemetry.x.tobytes()
        hits += fast.hit_tokens
    assert hits > 0


def test_a_dead_block_cached_meanwhile_by_another_request_is_not_counted_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Z caches (7, 8). A and B both hold (1, 2, 3); B, admitted while A still prefills, is their last holder,
    # so they are dead after B -- but A caches them between B's admission and B's insert. C then hits (7, 8)
    # only if B's anonymous run replaced A's copies instead of adding to them.
    tr = Trace("t", np.array([0.0, 1.0, 1.0, 10.0]), np.array([1024, 3000, 1536, 1536]), np.array([1, 1, 1, 1]),
               ((7, 8), (1, 2, 3), (1, 2, 3), (7, 8, 9)))
    assert block_reuse(tr.prefix_hashes) == ([0, 0, 3, 2], [2, 3, 0, 0])
    cfg = EngineConfig(max_batch_tokens=2048, max_num_seqs=8, prefix_cache_blocks=5)
    fast, plain = run_both(tr, "round_robin", cfg, monkeypatch, telemetry=False, n_replicas=1)
    assert fast.ttft_s.tobytes() == plain.ttft_s.tobytes() and fast.hit_tokens == plain.hit_tokens == 1024
