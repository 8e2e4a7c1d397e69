"""Semantic tier internals: pair features, the partition index (exact and HNSW), load adaptation,
prompt skipping, context binding, the encoder memo, and Router.decide(model_load=...)."""

from __future__ import annotations

import numpy as np
import pytest

from router.cache import CachePolicy, CategoryCachePolicy, LoadAdaptation, ResponseCache, embed
from router.cache_features import PAIR_FEATURES, feature_matrix, numbers, pair_features
from router.cache_index import PartitionIndex
from router.cache_store import CachedDoc, decode_doc, encode_doc

Q = "What is the boiling point of water at sea level in degrees Celsius?"
Q_NEAR = "What is the boiling point of pure water at sea level in degrees Celsius?"


def f(query: str, cached: str, cos: float = 0.9) -> dict[str, float]:
    return dict(zip(PAIR_FEATURES, pair_features(query, cached, cos)))


@pytest.mark.parametrize(("a", "b", "name"), [
    ("Summarise chapter 1 of the book", "Summarise chapter 2 of the book", "number_mismatch"),
    ("How do I enable 2FA on my account?", "How do I disable 2FA on my account?", "opposite_flip"),
    ("Is Pluto a planet?", "Is Pluto not a planet?", "negation_mismatch"),
])
def test_pair_features_flag_near_misses(a: str, b: str, name: str) -> None:
    assert f(a, b)[name] == 1.0
    assert f(a, a)[name] == 0.0


def test_pair_features_shape_and_category_one_hot() -> None:
    x = feature_matrix(Q, [Q, Q_NEAR], [1.0, 0.95], 2, 6)
    assert x.shape == (2, len(PAIR_FEATURES) + 7) and x.dtype == np.float32
    assert x[:, len(PAIR_FEATURES) + 2].tolist() == [1.0, 1.0]
    unknown = feature_matrix(Q, [Q], [1.0], -1, 6)
    assert unknown[0, -1] == 1.0
    assert numbers("room 1,000 and 2.5") == {"1000", "2.5"}


def test_partition_index_exact_then_hnsw_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = PartitionIndex(32, hnsw_min=100)
    for i in range(60):
        index.add(f"k{i}", x[i])
    keys, sims = index.search(x[5], 3)
    assert keys[0] == "k5" and sims[0] == pytest.approx(1.0, abs=1e-5)
    for i in range(60, 300):
        index.add(f"k{i}", x[i])
    assert index._hnsw is not None and len(index) == 300
    hits = sum(index.search(x[i], 1)[0] == [f"k{i}"] for i in range(0, 300, 7))
    assert hits >= 40  # HNSW recall@1 on its own points (43 queries)
    for i in range(0, 200):
        index.remove(f"k{i}")
    assert len(index) == 100 and "k5" not in index
    keys, _ = index.search(x[5], 5)
    assert all(int(k[1:]) >= 200 for k in keys)
    keys, _ = index.search(x[250], 1)
    assert keys == ["k250"]


def test_documents_round_trip_and_reject_tampering() -> None:
    doc = CachedDoc("k", "t", "c", "", "q", "answer é", "m", 1.0, 2.0, np.arange(4, dtype=np.float32))
    back = decode_doc(encode_doc(doc))
    assert back.answer == "answer é" and back.vector is not None and back.vector.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="checksum"):
        decode_doc(encode_doc(doc).replace(b"answer", b"ANSWER"))
    with pytest.raises(ValueError):
        decode_doc(b"[1, 2")


def test_load_adaptation_fraction_is_bounded() -> None:
    la = LoadAdaptation(start=0.8)
    assert [la.fraction(v) for v in (None, 0.5, 0.8)] == [0.0, 0.0, 0.0]
    assert la.fraction(0.9) == pytest.approx(0.5)
    assert la.fraction(1.0) == la.fraction(7.0) == 1.0
    assert la.fraction(float("nan")) == 0.0


def test_load_relaxes_the_threshold_only_within_bounds() -> None:
    sim = float(embed(Q) @ embed(Q_NEAR))
    threshold = sim + 0.02  # just above the pair's similarity
    policy = CachePolicy(categories={"k": CategoryCachePolicy(tier="semantic", threshold=threshold)},
                         load_adaptation=LoadAdaptation(start=0.8, max_threshold_relax=0.04))
    cache = ResponseCache(policy)
    cache.insert("t", "k", "semantic", Q, "100 °C", "m", now_s=0.0)
    assert cache.lookup("t", "k", "semantic", Q_NEAR, now_s=1.0) is None
    assert cache.lookup("t", "k", "semantic", Q_NEAR, now_s=1.0, load=0.8) is None
    assert cache.lookup("t", "k", "semantic", Q_NEAR, now_s=1.0, load=1.0) is not None
    tight = CachePolicy(categories={"k": CategoryCachePolicy(tier="semantic", threshold=min(1.0, sim + 0.06))},
                        load_adaptation=LoadAdaptation(start=0.8, max_threshold_relax=0.04))
    cache2 = ResponseCache(tight)
    cache2.insert("t", "k", "semantic", Q, "100 °C", "m", now_s=0.0)
    assert cache2.lookup("t", "k", "semantic", Q_NEAR, now_s=1.0, load=50.0) is None  # relaxation is capped


@pytest.mark.parametrize("text", ["", "   \n", "x" * 5000])
def test_empty_and_huge_prompts_skip(text: str) -> None:
    cache = ResponseCache(CachePolicy(categories={"k": CategoryCachePolicy(tier="semantic")}, max_prompt_chars=4000))
    cache.insert("t", "k", "semantic", text, "a", "m", now_s=0.0)
    assert len(cache) == 0
    assert cache.lookup("t", "k", "semantic", text, now_s=1.0) is None
    assert cache.stats.skipped_prompts == 1


def test_answers_are_bound_to_their_conversation_context() -> None:
    cache = ResponseCache(CachePolicy(categories={"k": CategoryCachePolicy(tier="semantic", threshold=0.9)}))
    cache.insert("t", "k", "semantic", Q, "100 °C", "m", now_s=0.0, context="system: answer in Fahrenheit")
    assert cache.lookup("t", "k", "semantic", Q, now_s=1.0) is None
    assert cache.lookup("t", "k", "semantic", Q_NEAR, now_s=1.0, context="system: be brief") is None
    hit = cache.lookup("t", "k", "semantic", Q_NEAR, now_s=1.0, context="system: answer in Fahrenheit")
    assert hit is not None and hit.tier == "semantic"


def test_lru_eviction_keeps_recently_hit_entries() -> None:
    cache = ResponseCache(CachePolicy(categories={"k": CategoryCachePolicy(tier="exact", max_entries=2, eviction="lru")}))
    cache.insert("t", "k", "exact", "one", "1", "m", now_s=0.0)
    cache.insert("t", "k", "exact", "two", "2", "m", now_s=1.0)
    assert cache.lookup("t", "k", "exact", "one", now_s=2.0) is not None
    cache.insert("t", "k", "exact", "three", "3", "m", now_s=3.0)
    assert cache.lookup("t", "k", "exact", "one", now_s=4.0) is not None
    assert cache.lookup("t", "k", "exact", "two", now_s=4.0) is None


def test_encoder_memo_computes_each_prompt_once() -> None:
    from training.classifier import encoder_available, load_encoder

    if not encoder_available():
        pytest.skip("encoder wheels not installed")
    enc = load_encoder(threads=1)
    a = enc.encode([Q])
    b = enc.encode_one(Q)
    assert enc.n_encoded == 1
    np.testing.assert_array_equal(a[0], b)
    batch = enc.encode([Q, Q_NEAR])  # a batch row is the lone prompt's embedding, bit for bit (router.encoder)
    np.testing.assert_array_equal(batch[0], b)
    assert float(batch[0] @ batch[1]) > 0.9


def test_router_relaxes_for_the_model_that_would_answer(bundle) -> None:  # type: ignore[no-untyped-def]
    from router.decision import Router
    from router.request import Message, Request

    router = Router(bundle)
    cat = "knowledge"
    prompt = "Who painted the ceiling of the Sistine Chapel in Rome, and when did he finish it?"
    near = "Who painted the ceiling of the Sistine Chapel in Rome, and when did he finish it exactly?"
    probe = router.decide(Request((Message("user", prompt),)), now_s=0.0, rng=np.random.default_rng(0))
    if probe.category != cat or probe.fallback:
        pytest.skip("the session bundle does not classify the probe as knowledge")
    emb = router.cache.embedder.encode
    sim = float(emb([prompt])[0] @ emb([near])[0])
    policy = CachePolicy(categories={cat: CategoryCachePolicy(tier="semantic", threshold=min(1.0, sim + 0.01))},
                         load_adaptation=LoadAdaptation(start=0.5, max_threshold_relax=0.05))
    router.cache = ResponseCache(policy, embedder=router.cache.embedder)
    first = router.decide(Request((Message("user", prompt),)), now_s=0.0, rng=np.random.default_rng(0))
    router.remember(Request((Message("user", prompt),), request_id=first.request_id), first, "Michelangelo", 0.0)
    calm = router.decide(Request((Message("user", near),)), now_s=1.0, rng=np.random.default_rng(0),
                         model_load={m: 0.1 for m in router.config.model_names})
    assert calm.cache_hit is None
    busy = router.decide(Request((Message("user", near),)), now_s=1.0, rng=np.random.default_rng(0),
                         model_load={m: 1.0 for m in router.config.model_names})
    assert busy.cache_hit is not None and busy.policy == "cache" and busy.cache_hit.answer == "Michelangelo"
