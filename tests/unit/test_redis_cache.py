"""The response cache on a real redis-server: sharing between replicas, rebuild after restart, TTL,
tenant isolation, corrupted documents, and Redis failures (a miss, never an exception)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from router.cache import CachePolicy, CategoryCachePolicy, ResponseCache, build_response_cache
from router.cache_store import CacheStoreSettings, RedisDocumentStore

TTL = 100.0
POLICY = CachePolicy(categories={
    "knowledge": CategoryCachePolicy(tier="semantic", threshold=0.92, ttl_s=TTL),
    "code": CategoryCachePolicy(tier="exact", ttl_s=TTL),
})
Q = "What is the boiling point of water at sea level in degrees Celsius?"
Q_NEAR = "What is the boiling point of pure water at sea level in degrees Celsius?"


@pytest.fixture
def settings(redis_url: str) -> CacheStoreSettings:
    # the 50 ms production socket timeout would turn a loaded CI box's slow reply into a test failure;
    # these tests are about sharing, not timeouts (the failure tests below use a dead server)
    return CacheStoreSettings(kind="redis", url=redis_url, key_prefix=f"test:{uuid.uuid4().hex[:8]}:",
                              socket_timeout_s=2.0)


@pytest.fixture
def caches(settings: CacheStoreSettings) -> Iterator[list[ResponseCache]]:
    made: list[ResponseCache] = []
    yield made
    for c in made:
        c.close()


def make(caches: list[ResponseCache], settings: CacheStoreSettings, follow: bool = False) -> ResponseCache:
    cache = build_response_cache(POLICY, settings, follow=follow)
    caches.append(cache)
    return cache


def test_an_entry_written_by_one_replica_is_found_by_another(caches: list[ResponseCache],
                                                              settings: CacheStoreSettings) -> None:
    a, b = make(caches, settings), make(caches, settings)
    a.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
    assert b.lookup("t", "knowledge", "semantic", Q_NEAR, now_s=1.0) is None  # not yet in b's index
    assert b.sync() == 1
    hit = b.lookup("t", "knowledge", "semantic", Q_NEAR, now_s=1.0)
    assert hit is not None and (hit.answer, hit.tier) == ("100 °C", "semantic")
    hit = b.lookup("t", "code", "exact", Q, now_s=1.0)
    assert hit is None  # other category
    a.insert("t", "code", "exact", Q, "print(100)", "small", now_s=0.0)
    exact = b.lookup("t", "code", "exact", Q.upper(), now_s=1.0)  # exact tier reads the store directly
    assert exact is not None and exact.answer == "print(100)"


def test_the_follower_thread_adopts_new_entries(caches: list[ResponseCache], settings: CacheStoreSettings) -> None:
    a, b = make(caches, settings), make(caches, settings, follow=True)
    a.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
    deadline = time.monotonic() + 10.0
    while len(b) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    hit = b.lookup("t", "knowledge", "semantic", Q_NEAR, now_s=1.0)
    assert hit is not None and hit.answer == "100 °C"


def test_a_restarted_replica_rebuilds_its_index(caches: list[ResponseCache], settings: CacheStoreSettings) -> None:
    a = make(caches, settings)
    for i in range(5):
        a.insert("t", "knowledge", "semantic", f"{Q} ({i})", f"a{i}", "medium", now_s=0.0)
    a.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
    a.close()
    restarted = make(caches, settings)
    assert len(restarted) == 6
    hit = restarted.lookup("t", "knowledge", "semantic", Q_NEAR, now_s=1.0)
    assert hit is not None and hit.answer == "100 °C"


def test_expired_entries_are_never_served_and_hits_do_not_extend_the_ttl(caches: list[ResponseCache],
                                                                          settings: CacheStoreSettings) -> None:
    a, b = make(caches, settings), make(caches, settings)
    a.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=1000.0)
    b.sync()
    for now in (1001.0, 1050.0, 1000.0 + TTL - 1):
        assert b.lookup("t", "knowledge", "semantic", Q_NEAR, now_s=now) is not None
    assert b.lookup("t", "knowledge", "semantic", Q_NEAR, now_s=1000.0 + TTL + 0.1) is None
    assert a.lookup("t", "knowledge", "semantic", Q, now_s=1000.0 + TTL + 0.1) is None
    restarted = make(caches, settings)
    assert restarted.lookup("t", "knowledge", "semantic", Q, now_s=1000.0 + TTL + 0.1) is None


def test_tenants_never_share_answers(caches: list[ResponseCache], settings: CacheStoreSettings) -> None:
    a, b = make(caches, settings), make(caches, settings)
    a.insert("acme", "knowledge", "semantic", Q, "acme's answer", "medium", now_s=0.0)
    a.insert("acme", "code", "exact", Q, "acme's code", "medium", now_s=0.0)
    b.sync()
    for cache in (a, b):
        assert cache.lookup("globex", "knowledge", "semantic", Q, now_s=1.0) is None
        assert cache.lookup("globex", "knowledge", "semantic", Q_NEAR, now_s=1.0) is None
        assert cache.lookup("globex", "code", "exact", Q, now_s=1.0) is None
        hit = cache.lookup("acme", "knowledge", "semantic", Q_NEAR, now_s=1.0)
        assert hit is not None and hit.answer == "acme's answer"


def test_a_corrupted_document_is_dropped_not_served(caches: list[ResponseCache], settings: CacheStoreSettings) -> None:
    import redis

    a = make(caches, settings)
    a.insert("t", "code", "exact", Q, "print(100)", "small", now_s=0.0)
    client = redis.Redis.from_url(settings.url)
    (key,) = list(client.scan_iter(match=f"{settings.key_prefix}doc:*"))
    raw = client.get(key)
    assert raw is not None
    client.set(key, raw.replace(b"print(100)", b"rm -rf /!"))  # same length, checksum no longer matches
    assert a.lookup("t", "code", "exact", Q, now_s=1.0) is None
    assert isinstance(a.store, RedisDocumentStore) and a.store.n_corrupt == 1
    assert client.get(key) is None
    client.set(key, b"\x00not json")
    assert a.lookup("t", "code", "exact", Q, now_s=1.0) is None
    client.close()


def test_unreachable_redis_is_a_miss_not_an_error(caches: list[ResponseCache]) -> None:
    from serving.redis_server import free_port

    dead = CacheStoreSettings(kind="redis", url=f"redis://127.0.0.1:{free_port()}/0", retry_after_s=0.0)
    cache = make(caches, dead)  # the start-up rebuild fails quietly too
    cache.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
    assert cache.lookup("t", "knowledge", "semantic", Q, now_s=1.0) is None
    assert cache.lookup("t", "code", "exact", Q, now_s=1.0) is None
    assert cache.sync() == 0
    assert isinstance(cache.store, RedisDocumentStore) and cache.store.n_errors >= 3


def test_a_server_that_dies_mid_flight_turns_lookups_into_misses(redis_url: str, caches: list[ResponseCache]) -> None:
    from serving.redis_server import spawn_redis

    server = spawn_redis()
    try:
        s = CacheStoreSettings(kind="redis", url=server.url, retry_after_s=0.0, socket_timeout_s=2.0)
        cache = make(caches, s, follow=True)
        cache.insert("t", "knowledge", "semantic", Q, "100 °C", "medium", now_s=0.0)
        assert cache.lookup("t", "knowledge", "semantic", Q_NEAR, now_s=1.0) is not None
    finally:
        server.stop()
    assert cache.lookup("t", "knowledge", "semantic", Q_NEAR, now_s=2.0) is None
    assert cache.lookup("t", "code", "exact", Q, now_s=2.0) is None
    cache.insert("t", "knowledge", "semantic", "another question", "x", "small", now_s=2.0)
    assert isinstance(cache.store, RedisDocumentStore) and cache.store.n_errors >= 2


def test_serve_spawns_a_local_redis_only_when_none_answers(redis_url: str) -> None:
    from serving.redis_server import answers, ensure_local_redis, free_port

    assert ensure_local_redis(redis_url) is None  # something already answers there
    port = free_port()
    spawned = ensure_local_redis(f"redis://127.0.0.1:{port}/0")
    assert spawned is not None
    try:
        assert answers(port)
    finally:
        spawned.stop()
    assert not answers(port)
