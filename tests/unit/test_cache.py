"""router.cache: exact and semantic tiers, partition isolation, TTL without extension, eviction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.cache import CachePolicy, CategoryCachePolicy, ResponseCache, embed, exact_key, normalise
from router.config import RouterConfig
from router.errors import ArtifactError

TTL = 100.0
POLICY = CachePolicy(categories={
    "code": CategoryCachePolicy(tier="exact", ttl_s=TTL),
    "knowledge": CategoryCachePolicy(tier="semantic", threshold=0.92, ttl_s=TTL),
    "chat": CategoryCachePolicy(tier="exact", ttl_s=TTL, max_entries=3),
})
Q = "What is the boiling point of water at sea level in degrees Celsius?"
Q_PLUS_ONE_WORD = "What is the boiling point of pure water at sea level in degrees Celsius?"
UNRELATED = "Who painted the ceiling of the Sistine Chapel in Rome?"


@pytest.fixture
def cache() -> ResponseCache:
    return ResponseCache(POLICY)


# --- exact tier -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [
    "how do I reverse a list in python",
    "How do I reverse a list in Python?",
    "  HOW DO I   reverse a list\tin python  ",
    "how do i reverse a list in python!!",
    "...how do I reverse a list in python.",
    "how do i reverse a list\nin python ;",
])
def test_exact_tier_normalisation_hits(cache: ResponseCache, variant: str) -> None:
    cache.insert("t", "code", "exact", "How do I reverse a list in Python?", "xs[::-1]", "small", now_s=0.0)
    hit = cache.lookup("t", "code", "exact", variant, now_s=1.0)
    assert hit is not None
    assert (hit.answer, hit.model, hit.similarity, hit.tier) == ("xs[::-1]", "small", 1.0, "exact")


@pytest.mark.parametrize("other", [
    "How do I reverse a list in Java?",
    "How do I reverse a string in Python?",
    "How do I reverse a list in Python? Please explain.",
    "How do I re-verse a list in Python?",
])
def test_exact_tier_different_text_misses(cache: ResponseCache, other: str) -> None:
    cache.insert("t", "code", "exact", "How do I reverse a list in Python?", "xs[::-1]", "small", now_s=0.0)
    assert cache.lookup("t", "code", "exact", other, now_s=1.0) is None


def test_normalise_and_exact_key() -> None:
    assert normalise("  Hello,\n  WORLD?! ") == "hello, world"
    assert exact_key("Hello world") == exact_key("hello   WORLD.")
    assert exact_key("hello world") != exact_key("hello, world")


def test_exact_tier_does_not_match_near_duplicates(cache: ResponseCache) -> None:
    cache.insert("t", "code", "exact", Q, "100 °C", "small", now_s=0.0)
    assert cache.lookup("t", "code", "exact", Q_PLUS_ONE_WORD, now_s=1.0) is None


# --- semantic tier -----------------------------------------------------------------------------------


def test_embed_is_unit_norm_and_deterministic() -> None:
    v = embed(Q)
    assert float(v @ v) == pytest.approx(1.0, abs=1e-5)
    assert (embed(Q) == v).all()
    assert float(embed(Q) @ embed(UNRELATED)) < 0.5


def test_semantic_near_duplicate_hits(cache: ResponseCache) -> None:
    cache.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
    hit = cache.lookup("t", "knowledge", "semantic", Q_PLUS_ONE_WORD, now_s=1.0)
    assert hit is not None
    assert hit.tier == "semantic" and hit.answer == "100 °C" and hit.model == "medium"
    assert 0.92 <= hit.similarity < 1.0


def test_semantic_exact_match_reports_exact(cache: ResponseCache) -> None:
    cache.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
    hit = cache.lookup("t", "knowledge", "semantic", Q.upper(), now_s=1.0)
    assert hit is not None and hit.tier == "exact" and hit.similarity == 1.0


def test_semantic_unrelated_misses(cache: ResponseCache) -> None:
    cache.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
    assert cache.lookup("t", "knowledge", "semantic", UNRELATED, now_s=1.0) is None


def test_semantic_threshold_is_per_category() -> None:
    strict = ResponseCache(CachePolicy(categories={"knowledge": CategoryCachePolicy(tier="semantic", threshold=0.99)}))
    strict.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
    assert strict.lookup("t", "knowledge", "semantic", Q_PLUS_ONE_WORD, now_s=1.0) is None


def test_semantic_picks_the_nearest_entry(cache: ResponseCache) -> None:
    cache.insert("t", "knowledge", "semantic", UNRELATED, "Michelangelo", "large", now_s=0.0)
    cache.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
    hit = cache.lookup("t", "knowledge", "semantic", Q_PLUS_ONE_WORD, now_s=1.0)
    assert hit is not None and hit.answer == "100 °C"


# --- isolation ---------------------------------------------------------------------------------------


def test_tenant_isolation(cache: ResponseCache) -> None:
    cache.insert("acme", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
    assert cache.lookup("globex", "knowledge", "semantic", Q, now_s=1.0) is None
    assert cache.lookup("acme", "knowledge", "semantic", Q, now_s=1.0) is not None


def test_category_isolation(cache: ResponseCache) -> None:
    cache.insert("t", "code", "exact", Q, "100 °C", "small", now_s=0.0)
    assert cache.lookup("t", "chat", "exact", Q, now_s=1.0) is None
    assert cache.lookup("t", "knowledge", "semantic", Q, now_s=1.0) is None
    assert cache.lookup("t", "code", "exact", Q, now_s=1.0) is not None


# --- TTL ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("category", "tier"), [("code", "exact"), ("knowledge", "semantic")])
def test_ttl_expiry_and_hits_do_not_extend_it(cache: ResponseCache, category: str, tier: str) -> None:
    t0 = 1000.0
    cache.insert("t", category, tier, Q, "100 °C", "medium", now_s=t0)  # type: ignore[arg-type]
    assert cache.lookup("t", category, tier, Q, now_s=t0 + 1) is not None  # type: ignore[arg-type]
    assert cache.lookup("t", category, tier, Q, now_s=t0 + TTL - 1) is not None  # type: ignore[arg-type]
    assert cache.lookup("t", category, tier, Q, now_s=t0 + TTL + 0.1) is None  # type: ignore[arg-type]
    assert len(cache) == 0


def test_expired_near_duplicate_misses_the_semantic_tier(cache: ResponseCache) -> None:
    cache.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
    assert cache.lookup("t", "knowledge", "semantic", Q_PLUS_ONE_WORD, now_s=TTL + 0.1) is None


def test_reinsert_restarts_the_ttl(cache: ResponseCache) -> None:
    cache.insert("t", "code", "exact", Q, "old", "small", now_s=0.0)
    cache.insert("t", "code", "exact", Q, "new", "large", now_s=50.0)
    assert len(cache) == 1
    hit = cache.lookup("t", "code", "exact", Q, now_s=TTL + 10)
    assert hit is not None and (hit.answer, hit.model) == ("new", "large")


def test_only_expired_entries_go(cache: ResponseCache) -> None:
    cache.insert("t", "code", "exact", "first", "1", "small", now_s=0.0)
    cache.insert("t", "code", "exact", "second", "2", "small", now_s=60.0)
    assert cache.lookup("t", "code", "exact", "second", now_s=TTL + 1) is not None
    assert cache.lookup("t", "code", "exact", "first", now_s=TTL + 1) is None
    assert len(cache) == 1


# --- capacity and skip --------------------------------------------------------------------------------


def test_max_entries_evicts_the_oldest(cache: ResponseCache) -> None:
    for i in range(4):  # chat holds 3
        cache.insert("t", "chat", "exact", f"message {i}", f"a{i}", "small", now_s=float(i))
    assert len(cache) == 3
    assert cache.lookup("t", "chat", "exact", "message 0", now_s=5.0) is None
    assert [cache.lookup("t", "chat", "exact", f"message {i}", now_s=5.0).answer for i in (1, 2, 3)] == ["a1", "a2", "a3"]  # type: ignore[union-attr]


def test_capacity_is_per_partition(cache: ResponseCache) -> None:
    for tenant in ("a", "b"):
        for i in range(3):
            cache.insert(tenant, "chat", "exact", f"message {i}", "x", "small", now_s=0.0)
    assert len(cache) == 6


def test_skip_tier_never_stores(cache: ResponseCache) -> None:
    cache.insert("t", "code", "skip", Q, "100 °C", "small", now_s=0.0)
    assert len(cache) == 0
    assert cache.lookup("t", "code", "exact", Q, now_s=1.0) is None
    cache.insert("t", "code", "exact", Q, "100 °C", "small", now_s=0.0)
    assert cache.lookup("t", "code", "skip", Q, now_s=1.0) is None


# --- the policy file ----------------------------------------------------------------------------------


def test_policy_from_router_config_and_file_round_trip(configs_dir: Path, tmp_path: Path) -> None:
    from router.config import load_config

    cfg = load_config(configs_dir / "router.yaml", RouterConfig)
    policy = CachePolicy.from_router_config(cfg)
    assert policy.for_category("knowledge").tier == "semantic"
    assert policy.for_category("knowledge").threshold == pytest.approx(0.92)
    assert policy.for_category("writing").tier == "skip"
    assert policy.for_category("unknown").tier == "skip"
    path = tmp_path / "cache_policy.json"
    path.write_text(policy.model_dump_json(), encoding="utf-8")
    assert CachePolicy.load(path) == policy


@pytest.mark.parametrize("text", ["{not json", json.dumps({"categories": {"code": {"tier": "fuzzy"}}})])
def test_invalid_policy_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cache_policy.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ArtifactError, match="cache_policy.json: invalid cache policy"):
        CachePolicy.load(path)
