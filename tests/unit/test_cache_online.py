"""router.cache_online: the online per-answer-cluster rule -- hand-made evidence, bounded memory,
strict causality, one rule for the replay and the real cache, tenant isolation, expiry, and evidence
rebuilt from Redis with the entries."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from router.cache import CachePolicy, CategoryCachePolicy, ResponseCache, TrigramEmbedder
from router.cache_online import Candidate, OnlineEvidence, OnlineSettings, answer_cluster
from router.cache_store import CacheStoreSettings, RedisDocumentStore
from training.cache_data import fit_stream
from training.cache_replay import online_replay, prepare

TAX = ("code", "math", "writing", "knowledge", "chat", "translation")
ENC = TrigramEmbedder()
FLOOR = 0.5


@pytest.fixture(scope="module")
def stream() -> list[dict[str, object]]:
    return fit_stream(100, seed=5)


def _policy(online: OnlineSettings, *, ttl_s: float = 1e9, max_entries: int = 10**6) -> CachePolicy:
    return CachePolicy(categories={c: CategoryCachePolicy(tier="semantic", threshold=0.8, ttl_s=ttl_s,
                                                          max_entries=max_entries) for c in TAX},
                       max_prompt_chars=10**9, online=online)


def _replay_cache(cache: ResponseCache, rows: list[dict[str, object]], emb: np.ndarray) -> list[int]:
    """Lookup, on a miss insert; returns -1 per miss and the row index of the served entry per hit."""
    out = []
    for i, r in enumerate(rows):
        hit = cache.lookup("t", str(r["category"]), "semantic", str(r["text"]), float(i), embedding=emb[i])
        if hit is None:
            answer = str(r["answer_id"])
            cache.insert("t", str(r["category"]), "semantic", str(r["text"]), answer, f"row{i}", float(i),
                         embedding=emb[i])
            out.append(-1)
        else:
            out.append(int(hit.model[3:]))
    return out


def test_the_rule_follows_hand_made_evidence() -> None:
    ev = OnlineEvidence(OnlineSettings(max_error=0.05, contrast_weight=0.0, pooled_weight=0.0))
    c = [Candidate("A", 0.8, 0.8)]
    mu0 = 0.9
    assert ev.decide(c, mu0, FLOOR)[0] is None  # prior alone: 0.8 is below the prior threshold 0.9
    for _ in range(6):  # same-answer queries arrived at 0.7 and were (wrongly) rejected
        ev.observe("A", [Candidate("A", 0.7, 0.7)], FLOOR)
    best, probs = ev.decide(c, mu0, FLOOR)
    assert best == 0 and probs[0] >= 0.95
    other = OnlineEvidence(ev.settings)
    for _ in range(6):  # cluster B saw other answers at 0.85: 0.8 stays rejected there
        other.observe("X", [Candidate("B", 0.85, 0.85)], FLOOR)
    assert other.decide([Candidate("B", 0.8, 0.8)], mu0, FLOOR)[0] is None
    assert other.p_correct("B", 0.8, mu0) < ev.p_correct("A", 0.8, mu0)
    # evidence of one cluster does not move another (pooled_weight 0)
    assert ev.p_correct("Z", 0.8, mu0) == pytest.approx(OnlineEvidence(ev.settings).p_correct("Z", 0.8, mu0))


def test_contrast_prefers_a_candidate_far_from_other_answers() -> None:
    ev = OnlineEvidence(OnlineSettings(contrast_weight=1.0))
    alone = ev.decide([Candidate("A", 0.9, 0.9)], 0.9, FLOOR)[1][0]
    crowded = ev.decide([Candidate("A", 0.9, 0.9), Candidate("B", 0.89, 0.89)], 0.9, FLOOR)[1][0]
    assert alone > crowded


def test_evidence_is_bounded_and_leaves_with_its_entries(stream: list[dict[str, object]]) -> None:
    ev = OnlineEvidence(OnlineSettings())
    ev.observe("A", [Candidate("A", 0.9, 0.9), Candidate("B", 0.7, 0.7)], FLOOR)
    size = ev.nbytes()
    for _ in range(200):
        ev.observe("A", [Candidate("A", 0.9, 0.9), Candidate("B", 0.7, 0.7)], FLOOR)
    assert ev.nbytes() == size and ev.n_pairs == 402  # more evidence, same memory
    cache = ResponseCache(_policy(OnlineSettings(), max_entries=40))
    emb = ENC.encode([str(r["text"]) for r in stream])
    _replay_cache(cache, stream, emb)
    assert cache.stats.feedback_pairs > 0
    for part in cache._parts.values():
        assert len(part.entries) <= 40
        assert set(part.cluster_size) == {m[0] for m in part.meta.values()}
        if part.evidence is not None:  # at most one fixed-size array per live cluster, plus the pooled one
            assert set(part.evidence.clusters) <= set(part.cluster_size)
            assert part.evidence.nbytes() <= (len(part.cluster_size) + 1) * part.evidence.pooled.nbytes


def test_decisions_depend_only_on_earlier_feedback(stream: list[dict[str, object]]) -> None:
    ps = prepare(stream, ENC.encode)
    mu0 = {c: 0.8 for c in TAX}
    base = online_replay(ps, OnlineSettings(), mu0, FLOOR, use_verifier=False)
    k = len(stream) // 2
    rng = np.random.default_rng(0)
    later = [ps.answer_ids[i] for i in range(k, len(stream))]
    ps.answer_ids[k:] = [later[j] for j in rng.permutation(len(later))]  # scramble all future feedback
    scrambled = online_replay(ps, OnlineSettings(), mu0, FLOOR, use_verifier=False)
    assert scrambled.decisions[:k] == base.decisions[:k]
    assert base.feedback_pairs > 50 and sum(d >= 0 for d in base.decisions) > 20
    assert scrambled.decisions != base.decisions  # the future did change (so the check has teeth)


@pytest.mark.parametrize("explore_rate", [0.0, 0.2])
def test_replay_and_real_cache_run_the_same_rule(stream: list[dict[str, object]], explore_rate: float) -> None:
    ps = prepare(stream, ENC.encode)
    online = OnlineSettings(explore_rate=explore_rate, seed=3)
    fast = online_replay(ps, online, {c: 0.8 for c in TAX}, FLOOR, use_verifier=False)
    cache = ResponseCache(_policy(online))
    real = _replay_cache(cache, stream, ps.embeddings)
    assert real == fast.decisions
    assert cache.stats.explorations == fast.explorations and (explore_rate == 0) == (fast.explorations == 0)
    assert cache.stats.feedback_pairs == fast.feedback_pairs


def test_tenants_and_expiry_hold_with_the_online_rule() -> None:
    cache = ResponseCache(_policy(OnlineSettings(max_error=0.5), ttl_s=10.0))
    q = "how do i reset my password"
    for i, text in enumerate([q, q + " now", q + " please"]):
        cache.insert("a", "chat", "semantic", text, "answer-a", "m", float(i))
    near = "how do i reset my password today"
    hit = cache.lookup("a", "chat", "semantic", near, 3.0)
    assert hit is not None and hit.answer == "answer-a"
    assert cache.lookup("b", "chat", "semantic", near, 3.0) is None  # another tenant: nothing
    assert ("b", "chat") not in cache._parts
    assert cache.lookup("a", "chat", "semantic", near, 12.5) is None  # all expired: never served
    assert cache.lookup("a", "chat", "semantic", q, 12.5) is None


def test_evidence_is_rebuilt_from_redis_with_the_entries(redis_url: str, stream: list[dict[str, object]]) -> None:
    settings = CacheStoreSettings(kind="redis", url=redis_url, key_prefix=f"test:{uuid.uuid4().hex[:8]}:")
    policy = _policy(OnlineSettings())
    rows = stream[:150]
    emb = ENC.encode([str(r["text"]) for r in rows])
    a = ResponseCache(policy, RedisDocumentStore(settings))
    _replay_cache(a, rows, emb)
    b = ResponseCache(policy, RedisDocumentStore(settings))  # a restarted replica: index + evidence from Redis
    try:
        assert a.stats.feedback_pairs > 0 and b.stats.feedback_pairs == a.stats.feedback_pairs
        for key, part in a._parts.items():
            other = b._parts[key]
            assert other.meta == part.meta
            if part.evidence is not None:
                assert set(other.evidence.clusters) == set(part.evidence.clusters)  # type: ignore[union-attr]
                np.testing.assert_allclose(other.evidence.pooled, part.evidence.pooled)  # type: ignore[union-attr]
    finally:
        a.close()
        b.close()


def test_answer_clusters_fold_case_and_space() -> None:
    assert answer_cluster("Paris.") == answer_cluster("  paris ")
    assert answer_cluster("Paris") != answer_cluster("Lyon")


def test_eval_reports_the_online_rows_beside_the_static_ones(stream: list[dict[str, object]]) -> None:
    from training.cache_eval import evaluate_stream, measure_online
    from training.cache_replay import verifier_probs
    from training.cache_train import CANDIDATE_FLOOR, fit_matchers, onnx_scorer

    matchers = fit_matchers(ENC.encode, TAX, fit_rows=fit_stream(60, seed=7))
    rows = stream[:150]
    rep = evaluate_stream(rows, ENC, matchers, latency=False)
    assert {"global_threshold", "per_category_thresholds", "verifier", "global_threshold_fitted", "verifier_online",
            "verifier_online_explore"} <= set(rep["methods"])
    assert rep["methods"]["verifier_online"]["feedback"]["used"] == "misses only"
    assert rep["methods"]["verifier_online_explore"]["feedback"]["explore_rate"] > 0
    assert len(rep["curves"]["verifier_online"]) > 3 and "hit_rate_ratio_verifier_online_vs_global" in rep["at_target"]
    assert "hit_rate_ratio_verifier_online_vs_oracle_global" in rep["matched"]
    # the verifier path of the online rule: the real cache serves exactly what the replay serves
    ps = prepare(rows, ENC.encode)
    verifier_probs(ps, onnx_scorer(matchers.verifier_onnx), TAX, CANDIDATE_FLOOR)
    cut = {c: matchers.cutoffs.get(c, matchers.global_cutoff) for c in TAX}
    online = measure_online(ps, matchers, {c: 0.9 for c in TAX}, cut, ENC)
    assert online["same_decisions_as_replay"] == 1.0 and online["real_cache_hits"] == online["replay_hits"] > 0


def test_serving_learns_from_the_answers_it_stores(bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The serving hook: ``Router.remember`` inserts the model's answer, and the insert labels the
    candidates the lookup weighed -- no gateway change, no extra call."""
    from router.decision import Router
    from router.request import Message, Request
    from training.bundle_builder import with_cache_policy

    online = OnlineSettings(max_error=1e-4, contrast_weight=0.0, candidate_floor=0.0)  # every request misses
    policy = CachePolicy(categories={c: CategoryCachePolicy(tier="semantic", threshold=1.0) for c in TAX},
                         online=online)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cache_policy.json").write_text(policy.model_dump_json(), encoding="utf-8")
    router = Router(with_cache_policy(bundle, tmp_path / "cache", tmp_path / "b2"))
    assert router.cache.policy.online == online
    for i, (text, answer) in enumerate([("how do I reverse a list in python", "xs[::-1]"),
                                        ("how do I reverse a list in python quickly", "xs[::-1]"),
                                        ("how do I sort a list in python", "sorted(xs)")]):
        req = Request((Message("user", text),))
        d = router.decide(req, now_s=float(i), rng=np.random.default_rng(0))
        assert d.cache_hit is None
        router.remember(req, d, answer, float(i))
    assert router.cache.stats.feedback_pairs >= 1
    parts = [p for p in router.cache._parts.values() if p.evidence is not None]
    assert parts and sum(len(p.entries) for p in router.cache._parts.values()) == 3
