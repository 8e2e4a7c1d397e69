"""Replica choice without a cluster: router.replica (features, scorer, policies) and the Serve
``LearnedReplicaRouter`` driven directly (../shared/notes/ray-serve.md §1.8)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata
from ray.serve.request_router import PendingRequest, RunningReplica

from router.errors import ArtifactError, FeatureMismatchError
from router.replica import (PREFIX_CHECKPOINTS, N_STATE, REPLICA_FEATURE_NAMES, FeatureRows, Learned, PrefixAffinity,
                            ReplicaRequest, ReplicaScorer, features_from_states, has_stats, make_policy,
                            prefix_hit_tokens, prompt_block_hashes, rank_by_scores, replica_feature_matrix,
                            replica_features, replica_state, request_from_body, request_hits, request_hits_or_none)
from serving.replica_router import LearnedReplicaRouter, Pow2ReplicaRouter
from training.replica_eval import train_quick_scorer


def stats(ongoing: int = 0, waiting: int = 0, waiting_tokens: int = 0, step_ms: float = 10.0,
          summary: Any = None, queued_kv: int = 0, **extra: Any) -> dict[str, Any]:
    s = {"num_ongoing": ongoing, "num_waiting": waiting, "running_tokens": 1000 * ongoing,
         "waiting_tokens": waiting_tokens, "kv_used_frac": 0.01 * ongoing, "kv_capacity_tokens": 100_000,
         "step_ms": step_ms, "queued_kv_tokens": queued_kv, **extra}
    if summary is not None:
        s["prefix_summary"] = summary
    return s


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("replica-model")
    train_quick_scorer(out, n_requests=600)
    return out


# ---------------------------------------------------------------------------------------------- features


def test_checkpoints_are_about_sqrt2_apart() -> None:
    assert PREFIX_CHECKPOINTS[:12] == (0, 1, 2, 3, 5, 7, 11, 15, 23, 31, 47, 63)


@pytest.mark.parametrize(("cached", "hit"), [
    ({10, 11, 12, 13, 14, 15}, 4 * 512),  # positions 0-3 checked and cached; position 5 (15) not reached
    ({10, 11, 12, 13, 14, 15, 16}, 6 * 512),  # checkpoint position 5 (length 6) cached
    ({11, 12}, 0),  # the first block is missing: chained hashes cannot match later ones
    (set(), 0),
])
def test_prefix_hit_tokens_at_checkpoints(cached: set[int], hit: int) -> None:
    hashes = (10, 11, 12, 13, 14, 16, 17, 18)
    assert prefix_hit_tokens(hashes, cached, 10_000) == hit


def test_prefix_hit_is_capped_below_the_prompt() -> None:
    assert prefix_hit_tokens((1, 2), {1, 2}, 700) == 699
    assert prefix_hit_tokens((), {1}, 700) == 0 and prefix_hit_tokens((1,), None, 700) == 0


def test_features_in_documented_order() -> None:
    x = replica_features(stats(ongoing=2, waiting=3, waiting_tokens=5000, step_ms=25.0, summary={7}, queued_kv=6500),
                         ReplicaRequest(1500, (7, 8)))
    expected = {"num_ongoing": 2, "num_waiting": 3, "running_tokens": 2000, "waiting_tokens": 5000,
                "kv_used_frac": 0.02, "kv_free_tokens": 98_000, "step_ms": 25.0, "queued_kv_tokens": 6500,
                "input_tokens": 1500, "prefix_hit_tokens": 512, "uncached_tokens": 988, "work_ahead_tokens": 5988,
                "work_ahead_token_s": 5988 * 25.0 / 1000, "kv_need_frac": 8000 / 98_000, "kv_excess_tokens": -90_000}
    assert x.dtype == np.float32 and x.shape == (len(REPLICA_FEATURE_NAMES),)
    assert dict(zip(REPLICA_FEATURE_NAMES, x.tolist())) == pytest.approx(expected)
    m = replica_feature_matrix([stats(), stats(ongoing=1)], ReplicaRequest(10))
    assert m.shape == (2, len(REPLICA_FEATURE_NAMES)) and np.array_equal(m[0], replica_features(stats(), ReplicaRequest(10)))


def test_has_stats() -> None:
    assert has_stats(stats()) and not has_stats({}) and not has_stats(None)
    assert not has_stats({"num_ongoing": 1, "ewma_latency_ms": 3.0})  # a replica without an engine model


def test_block_hashes_chain_over_full_blocks() -> None:
    a = prompt_block_hashes("x" * 4096 + "y" * 2048 + "tail")
    b = prompt_block_hashes("x" * 4096 + "z" * 2048)
    assert len(a) == 3 and len(b) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert prompt_block_hashes("short") == () and all(0 <= h < 2**63 for h in a)


def test_request_from_body() -> None:
    body = {"messages": [{"role": "user", "content": "a" * 4100}]}
    r = request_from_body(body)
    assert r.input_tokens == 1025 and len(r.prefix_hashes) == 2
    meta = request_from_body({**body, "metadata": {"input_tokens": 9000, "prefix_hashes": [4, 5]}})
    assert meta == ReplicaRequest(9000, (4, 5))
    assert request_from_body("hello world!") == ReplicaRequest(3, ())
    assert request_from_body(None) == ReplicaRequest(0) and request_from_body({"messages": "x"}).input_tokens == 1


# ---------------------------------------------------------------------------------------------- policies


def test_make_policy_names() -> None:
    assert [make_policy(n).name for n in ("round_robin", "pow2", "least_loaded", "prefix_affinity")] == [
        "round_robin", "pow2", "least_loaded", "prefix_affinity"]
    with pytest.raises(ValueError, match="unknown replica policy 'fastest'; choose from round_robin, pow2"):
        make_policy("fastest")
    with pytest.raises(ValueError, match="needs a scorer"):
        make_policy("learned")


def test_pow2_never_picks_the_most_loaded() -> None:
    p = make_policy("pow2", seed=0)
    s = [stats(ongoing=1), stats(ongoing=9), stats(ongoing=4)]
    counts = Counter(p.choose(s, ReplicaRequest(1)) for _ in range(3000))
    assert counts[1] == 0 and counts[0] / 3000 == pytest.approx(2 / 3, abs=0.04)


def test_least_loaded_breaks_ties_at_random() -> None:
    p = make_policy("least_loaded", seed=0)
    s = [stats(ongoing=2), stats(ongoing=1), stats(ongoing=1), stats(ongoing=1)]
    counts = Counter(p.choose(s, ReplicaRequest(1)) for _ in range(3000))
    assert counts[0] == 0 and all(0.28 < counts[i] / 3000 < 0.39 for i in (1, 2, 3))


def test_prefix_affinity_follows_the_prefix_within_the_gate() -> None:
    req = ReplicaRequest(3000, (1, 2, 3, 4, 5))
    p = PrefixAffinity(seed=0, max_imbalance=4)
    s = [stats(ongoing=3, summary={1, 2, 3, 4}), stats(ongoing=0), stats(ongoing=1, summary={1})]
    assert {p.choose(s, req) for _ in range(50)} == {0}  # longest prefix, load 3 <= 0 + 4
    s[0] = stats(ongoing=5, summary={1, 2, 3, 4})  # over the gate: next best prefix among the eligible
    assert {p.choose(s, req) for _ in range(50)} == {2}
    s[2] = stats(ongoing=5, summary={1})
    assert {p.choose(s, req) for _ in range(50)} == {1}  # no eligible replica holds it: least loaded


def test_prefix_affinity_ignores_a_tiny_shared_prefix() -> None:
    # a shared 512-token system prompt is < 10% of a 9,000-token prompt: load decides, not the prefix
    p = PrefixAffinity(seed=0)
    s = [stats(ongoing=2, summary={1}), stats(ongoing=0)]
    assert {p.choose(s, ReplicaRequest(9000, (1, 2))) for _ in range(30)} == {1}


class FakeScorer:
    """Predicts log TTFT = work_ahead_tokens / 1000 (no ONNX)."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return x[:, REPLICA_FEATURE_NAMES.index("work_ahead_tokens")] / 1000.0

    def bind(self, x: np.ndarray) -> Callable[[], np.ndarray]:
        return lambda: self.predict(x)


def test_learned_takes_the_argmin_and_ranks_best_first() -> None:
    p = Learned(FakeScorer(), seed=0)  # type: ignore[arg-type]
    s = [stats(waiting_tokens=9000), stats(waiting_tokens=100), stats(waiting_tokens=4000)]
    assert p.choose(s, ReplicaRequest(500)) == 1
    assert p.rank(s, ReplicaRequest(500)) == [1, 2, 0]
    assert p.n_fallbacks == 0


def test_learned_ties_are_random() -> None:
    p = Learned(FakeScorer(), seed=0)  # type: ignore[arg-type]
    counts = Counter(p.choose([stats(), stats(), stats()], ReplicaRequest(10)) for _ in range(900))
    assert all(counts[i] > 240 for i in range(3))


def test_learned_falls_back_to_pow2_on_missing_stats() -> None:
    scorer = FakeScorer()
    p = Learned(scorer, seed=0)  # type: ignore[arg-type]
    s: list[Mapping[str, Any] | None] = [stats(ongoing=5), None]
    assert p.choose(s, ReplicaRequest(10)) in (0, 1) and p.n_fallbacks == 1 and scorer.calls == 0
    assert sorted(p.rank(s, ReplicaRequest(10), queue_lens=[5, 0])) == [0, 1] and p.n_fallbacks == 2
    assert Learned(None, seed=0).choose([stats(), stats()], ReplicaRequest(1)) in (0, 1)


def test_rank_by_scores() -> None:
    import random

    assert rank_by_scores([3.0, 1.0, 2.0], random.Random(0)) == [1, 2, 0]


# ---------------------------------------------------------------------------------------------- scorer


def test_scorer_loads_and_predicts(quick_model: Path) -> None:
    scorer = ReplicaScorer(quick_model)
    assert scorer.manifest["feature_names"] == list(REPLICA_FEATURE_NAMES)
    req = ReplicaRequest(2000)
    x = replica_feature_matrix([stats(), stats(ongoing=8, waiting=6, waiting_tokens=40_000, step_ms=80.0)], req)
    pred = scorer.predict(x)
    assert pred.shape == (2,) and pred[0] < pred[1]  # a deep prefill queue predicts a later first token
    assert ReplicaScorer(quick_model / "replicas.onnx").predict(x).tolist() == pred.tolist()


def test_feature_rows_are_bitwise_the_featurization() -> None:
    rng = np.random.default_rng(3)
    states = np.column_stack([rng.integers(0, 200, 9), rng.integers(0, 50, 9), rng.integers(0, 400_000, 9),
                              rng.integers(0, 10**6, 9), rng.random(9), rng.integers(0, 400_000, 9),
                              rng.uniform(1, 500, 9), rng.integers(0, 400_000, 9)]).astype(np.float64)
    states[2, 5] = 0.0  # no free KV: kv_need_frac divides by max(free, 1)
    rows = FeatureRows(states)
    for hits in ([0] * 9, [0, 512, 0, 0, 0, 0, 0, 0, 4096], [10**6] * 9):
        for n_in in (0, 1, 2, 1537, 16_777_217, 123_456_789):
            want = features_from_states(states, hits, n_in)
            assert rows.fill(hits, n_in).tobytes() == want.tobytes(), (hits, n_in)
    shifted = states + 1.5
    rows.set_states(shifted)
    assert rows.fill([7] * 9, 100).tobytes() == features_from_states(shifted, [7] * 9, 100).tobytes()
    for n_in in (100, 100, 0, 3, 3, 2_000_003):  # None = no hit anywhere; a repeated size reuses its row
        assert rows.fill(None, n_in).tobytes() == features_from_states(shifted, [0] * 9, n_in).tobytes(), n_in
        assert rows.fill([0, 512] + [0] * 7, n_in).tobytes() == features_from_states(
            shifted, [0, 512] + [0] * 7, n_in).tobytes()
    queued = shifted.copy()
    queued[4, 1], queued[4, 3], queued[4, 7] = 17.0, 123_457.0, 654_321.0
    rows.set_queued_row(4, 17.0, 123_457.0, 654_321.0)  # one replica's queue changed: work-ahead + KV columns follow
    assert rows.fill(None, 2500).tobytes() == features_from_states(queued, [0] * 9, 2500).tobytes()
    queued[:, 7] = 5.0
    rows.set_queued(queued[:, 1], queued[:, 3], queued[:, 7])
    assert rows.fill([3] * 9, 10**6).tobytes() == features_from_states(queued, [3] * 9, 10**6).tobytes()


def test_request_hits_or_none_is_none_only_without_a_first_block_anywhere() -> None:
    summaries: list[set[int] | None] = [None, {1, 2}, {1}, set()]
    assert request_hits_or_none(ReplicaRequest(5000, (9, 2)), summaries) is None
    assert request_hits_or_none(ReplicaRequest(5000), summaries) is None
    assert request_hits(ReplicaRequest(5000, (9, 2)), summaries) == [0, 0, 0, 0]
    hits = request_hits_or_none(ReplicaRequest(5000, (1, 2)), summaries, [s for s in summaries if s is not None])
    assert hits == request_hits(ReplicaRequest(5000, (1, 2)), summaries) == [0, 1024, 512, 0]


def test_bound_scorer_predicts_what_predict_does_on_the_live_buffer(quick_model: Path) -> None:
    scorer = ReplicaScorer(quick_model)
    rows = FeatureRows(np.array([replica_state(stats(ongoing=k, waiting_tokens=3000 * k)) for k in range(5)]))
    bound = scorer.bind(rows.x)
    for n_in, hits in ((500, [0] * 5), (9000, [0, 8191, 0, 4096, 0])):
        x = rows.fill(hits, n_in)  # written in place: the binding must see the new contents
        assert bound().tolist() == scorer.predict(x.copy()).tolist()
    with pytest.raises(ValueError, match="C-contiguous float32"):
        scorer.bind(np.zeros((3, len(REPLICA_FEATURE_NAMES)), dtype=np.float64))


class _ChangedPrivate:  # a future onnxruntime whose private pybind call changed signature
    def run_with_iobinding(self, *_a: Any) -> None:
        raise TypeError("incompatible function arguments")


@pytest.mark.parametrize("private", [None, _ChangedPrivate()], ids=["no_private_session", "changed_private_call"])
def test_bound_scorer_uses_the_public_binding_when_the_private_call_is_missing_or_broken(
        quick_model: Path, private: Any) -> None:
    """``_sess.run_with_iobinding`` is private onnxruntime API: without it, or when a trial call at bind
    time fails, the public wrapper runs every decision (never a decision that raises)."""
    class PublicOnly:
        def __init__(self, session: Any) -> None:
            self._s, self.calls = session, 0
            if private is not None:
                self._sess = private

        def io_binding(self) -> Any:
            return self._s.io_binding()

        def run_with_iobinding(self, binding: Any) -> None:
            self.calls += 1
            self._s.run_with_iobinding(binding)

    scorer = ReplicaScorer(quick_model)
    rows = FeatureRows(np.array([replica_state(stats(ongoing=k, waiting_tokens=3000 * k)) for k in range(4)]))
    x = rows.fill(None, 700)
    want = scorer.predict(x.copy()).tolist()
    scorer.session = PublicOnly(scorer.session)  # type: ignore[assignment]
    bound = scorer.bind(x)
    assert bound().tolist() == want and scorer.session.calls == 1  # type: ignore[attr-defined]


def test_scorer_refuses_a_mismatched_or_corrupt_model(quick_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "m"
    shutil.copytree(quick_model, bad)
    manifest = json.loads((bad / "replicas.json").read_text())
    (bad / "replicas.json").write_text(json.dumps({**manifest, "feature_version": "replica-v0"}))
    with pytest.raises(FeatureMismatchError, match="trained on features replica-v0"):
        ReplicaScorer(bad)
    (bad / "replicas.json").write_text(json.dumps(manifest))
    (bad / "replicas.onnx").write_bytes((bad / "replicas.onnx").read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="does not match replicas.json"):
        ReplicaScorer(bad)
    with pytest.raises(ArtifactError, match="no replica model at .*missing: expected a directory"):
        ReplicaScorer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="cannot read the replica model"):
        ReplicaScorer(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- Serve router


class FakeReplica(RunningReplica):
    """A replica as the router sees it; skips ``__init__`` (no actor)."""

    def __init__(self, name: str, routing_stats: dict[str, Any] | None = None, max_ongoing: int = 100) -> None:
        self._rid = ReplicaID(unique_id=name, deployment_id=DeploymentID(name="LLM", app_name="app"))
        self._stats = routing_stats or {}
        self._max_ongoing = max_ongoing

    @property
    def replica_id(self) -> ReplicaID:
        return self._rid

    @property
    def routing_stats(self) -> dict[str, Any]:
        return self._stats

    @property
    def max_ongoing_requests(self) -> int:
        return self._max_ongoing

    @property
    def node_id(self) -> str:
        return "node"

    @property
    def availability_zone(self) -> str | None:
        return None

    @property
    def multiplexed_model_ids(self) -> set[str]:
        return set()

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return 0


class BrokenReplica(FakeReplica):
    @property
    def routing_stats(self) -> dict[str, Any]:
        raise RuntimeError("boom")


def make_router(cls: type = LearnedReplicaRouter, replicas: list[FakeReplica] | None = None,
                **kwargs: Any) -> Any:
    """Call inside a running event loop: ``update_replicas`` schedules queue-length probes on it."""
    r = cls(deployment_id=DeploymentID(name="LLM", app_name="app"), handle_source=DeploymentHandleSource.REPLICA,
            use_replica_queue_len_cache=True)
    r.initialize_state(**kwargs)
    r.update_replicas(replicas or [])
    return r


def pending(body: Any = "hi", rid: str = "1") -> PendingRequest:
    return PendingRequest(args=[body, "chat"], kwargs={},
                          metadata=RequestMetadata(request_id=rid, internal_request_id=rid))


async def choose(router: Any, pr: PendingRequest | None) -> list[list[Any]]:
    return await router.choose_replicas(list(router.curr_replicas.values()), pr)  # type: ignore[no-any-return]


def names(ranks: list[list[Any]]) -> list[list[str]]:
    return [[r.replica_id.unique_id for r in rank] for rank in ranks]


@pytest.fixture
def three() -> list[FakeReplica]:
    return [FakeReplica("busy", stats(ongoing=8, waiting=5, waiting_tokens=60_000, step_ms=90.0, ts=1e12)),
            FakeReplica("idle", stats(ts=1e12)),
            FakeReplica("mid", stats(ongoing=3, waiting=0, waiting_tokens=3000, step_ms=30.0, ts=1e12))]


def test_learned_router_ranks_by_predicted_ttft(quick_model: Path, three: list[FakeReplica]) -> None:
    async def body() -> None:
        router = make_router(replicas=three, scorer_path=str(quick_model), seed=0)
        pr = pending({"messages": [{"role": "user", "content": "x" * 8000}]})
        ranks = await choose(router, pr)
        assert names(ranks)[0] == ["idle"] and names(ranks)[-1] == ["busy"] and len(ranks) == 3
        assert pr.routing_context.should_backoff is True  # else Ray busy-loops when all are full
        assert router.scorer_error is None and router.n_fallbacks == 0

    asyncio.run(body())


def test_learned_router_follows_the_prefix_cache(three: list[FakeReplica]) -> None:
    async def body() -> None:
        hashes = list(range(100, 116))
        three[0]._stats = stats(ongoing=1, waiting_tokens=500, summary=[100, 101, 102, 103, 105, 107, 111, 115])
        router = make_router(replicas=three)
        router._policy.scorer = FakeScorer()
        pr = pending({"messages": [], "metadata": {"input_tokens": 8192, "prefix_hashes": hashes}})
        assert names(await choose(router, pr))[0] == ["busy"]  # 8,191 of 8,192 tokens cached there

    asyncio.run(body())


def test_learned_router_falls_back_to_pow2_without_stats() -> None:
    async def body() -> None:
        router = make_router(replicas=[FakeReplica("a", {"num_ongoing": 3}), FakeReplica("b", {})], seed=0)
        router._policy.scorer = FakeScorer()
        ranks = await choose(router, pending())
        assert sorted(names(ranks)) == [["a"], ["b"]] and router.n_fallbacks == 1

    asyncio.run(body())


def test_learned_router_survives_a_bad_scorer_path(tmp_path: Path, three: list[FakeReplica]) -> None:
    async def body() -> None:
        router = make_router(replicas=three, scorer_path=str(tmp_path / "nope"), seed=0, bogus=1)
        assert "ArtifactError" in router.scorer_error
        assert len(await choose(router, pending())) == 3 and router.n_fallbacks == 1

    asyncio.run(body())


def test_learned_router_never_raises(three: list[FakeReplica]) -> None:
    async def body() -> None:
        router = make_router(replicas=[*three, BrokenReplica("broken")])
        router._policy.scorer = FakeScorer()
        pr = pending()
        ranks = await choose(router, pr)
        assert len(ranks) == 1 and len(ranks[0]) == 4  # every candidate, in one rank
        assert pr.routing_context.should_backoff is True

    asyncio.run(body())


def test_learned_router_counts_its_own_sends_until_the_next_snapshot(three: list[FakeReplica]) -> None:
    async def body() -> None:
        three[1]._stats = stats(ts=0.0)  # "idle": a snapshot taken long ago
        router = make_router(replicas=three[1:])
        router._policy.scorer = FakeScorer()
        routed, routed_to = [], []
        for i in range(4):
            pr = pending("y" * 16_000, rid=str(i))
            ranks = await choose(router, pr)
            router.on_request_routed(pr, ranks[0][0].replica_id, None)
            routed.append(str(i))
            routed_to.append(ranks[0][0].replica_id.unique_id)
        def state() -> tuple[float, ...]:  # "idle" as the router sees it: its snapshot plus the late sends
            snap = router._snapshot(three[1])
            return replica_state(snap[0], *router._late.get("idle", (0, 0)))

        assert state()[1] >= 1 and state()[3] >= 4000  # num_waiting, waiting_tokens: sends count until a new snapshot
        waiting = state()[1]
        done = next(rid for rid, to in zip(routed, routed_to) if to == "idle")
        router.on_request_completed(three[1].replica_id, done)  # a finished request no longer counts
        assert state()[1] == waiting - 1
        three[1]._stats = stats(ts=1e12)  # a snapshot taken after them already includes them
        assert state()[1] == 0

    asyncio.run(body())


def test_learned_router_rows_follow_sends_and_completions(three: list[FakeReplica]) -> None:
    async def body() -> None:
        for r in three:
            r._stats = {**r._stats, "ts": 0.0}  # snapshots taken long ago: every send counts
        router = make_router(replicas=three)
        router._policy.scorer = FakeScorer()
        cands = list(router.curr_replicas.values())
        request = ReplicaRequest(6000)

        def expected() -> bytes:  # from the send log itself, not the router's running counts
            states = []
            for r in cands:
                ts = r.routing_stats["ts"]
                sends = [n for t, n in router._sent.get(r.replica_id.unique_id, {}).values() if t > ts]
                states.append(replica_state(r.routing_stats, len(sends), sum(sends)))
            return features_from_states(states, [0] * 3, 6000).tobytes()  # type: ignore[no-any-return]

        router.rank(cands, request)
        before = router._batch.rows.x.tobytes()
        assert before == expected()
        for key, to in (("a", 1), ("b", 1), ("c", 2)):
            router.on_request_routed(pending("z" * 4000, rid=key), cands[to].replica_id, None)
        router.rank(cands, request)
        assert router._batch.rows.x.tobytes() == expected() != before
        router.on_request_completed(cands[1].replica_id, "a")
        router.rank(cands, request)
        assert router._batch.rows.x.tobytes() == expected()
        cands[2]._stats = {**cands[2]._stats, "ts": 1e12}  # a new snapshot that already includes "c"
        router.on_request_completed(cands[1].replica_id, "b")
        router.rank(cands, request)  # back to the snapshots' own states
        assert router._batch.rows.x.tobytes() == expected() == before
        assert not any(c[0] for c in router._late.values())

    asyncio.run(body())


def test_single_candidate_and_no_kwargs() -> None:
    async def body() -> None:
        router = make_router(replicas=[FakeReplica("only", stats())])
        assert names(await choose(router, pending())) == [["only"]]
        bare = LearnedReplicaRouter(deployment_id=DeploymentID(name="LLM", app_name="app"),
                                    handle_source=DeploymentHandleSource.REPLICA)
        bare.update_replicas([FakeReplica("a", stats()), FakeReplica("b", stats())])
        assert len(await choose(bare, None)) == 2  # initialize_state never called: pow-2, no crash

    asyncio.run(body())


def test_pow2_router_still_works() -> None:
    async def body() -> None:
        router = make_router(Pow2ReplicaRouter, [FakeReplica("a", stats(ongoing=9)), FakeReplica("b", stats())],
                             seed=0)
        assert names(await choose(router, pending()))[0] == ["b"]

    asyncio.run(body())


def test_kv_features_flag_a_request_whose_kv_does_not_fit() -> None:
    """``queued_kv_tokens`` (engine stat) + the request's prompt vs free KV: the head-of-line wait that
    prefill work alone does not show (``replica-v2``)."""
    from training.engine import EngineConfig, ReplicaEngine

    e = ReplicaEngine(EngineConfig(kv_capacity_tokens=10_000, max_num_seqs=8, max_batch_tokens=2048))
    e.submit(0.0, 0, 6000, 500)  # admitted: reserves 6,500 of 10,000
    e.submit(0.0, 1, 3000, 1000)  # 6,500 + 4,000 > 10,000: queued behind the running request's decode
    s = e.stats(0.0)
    assert s["num_waiting"] == 1 and s["queued_kv_tokens"] == 4000 and s["running_tokens"] == 6500
    x = dict(zip(REPLICA_FEATURE_NAMES, replica_features(s, ReplicaRequest(2000)).tolist()))
    assert x["queued_kv_tokens"] == 4000 and x["kv_free_tokens"] == 3500
    assert x["kv_excess_tokens"] == 4000 + 2000 - 3500 and x["kv_need_frac"] == pytest.approx(6000 / 3500)
    fits = dict(zip(REPLICA_FEATURE_NAMES, replica_features(stats(), ReplicaRequest(2000)).tolist()))
    assert fits["kv_excess_tokens"] == 2000 - 100_000 and fits["kv_need_frac"] == pytest.approx(2000 / 100_000)
    late = replica_state(s, sent=2, sent_tokens=700)  # the router's own sends since the snapshot count as queued KV
    assert late[N_STATE - 1] == 4700 and late[1] == 3
