"""serving.metrics.GatewayMetrics: per-request counters summed locally and flushed (``flush_s > 0``)."""

from __future__ import annotations

from typing import Any

from serving.metrics import GatewayMetrics, NullMetrics


class Instrument:
    def __init__(self, name: str, tag_keys: tuple[str, ...] = (), **_: Any) -> None:
        self.name, self.tag_keys = name, tag_keys
        self.calls: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        assert set(tags or {}) == set(self.tag_keys), (self.name, tags)
        self.calls.append((value, dict(tags or {})))

    observe = inc


class Factory:
    def __init__(self) -> None:
        self.made: dict[str, Instrument] = {}

    def Counter(self, name: str, **kw: Any) -> Instrument:  # noqa: N802 - mirrors ray.serve.metrics
        self.made[name] = Instrument(name, **kw)
        return self.made[name]

    Histogram = Counter


def _decide(m: GatewayMetrics, model: str = "large", tier: str = "exact", hit: bool = False) -> None:
    m.decision(model=model, category="code", arm="a", policy="epsilon_greedy", tier=tier, hit=hit, decision_ms=0.5)


def test_batched_counters_are_summed_per_tag_set_until_flushed() -> None:
    f = Factory()
    m = GatewayMetrics(f, flush_s=3600.0)
    for _ in range(3):
        _decide(m)
    _decide(m, model="small", tier="skip")
    m.error("bad_request")
    m.error("bad_request")
    m.completed(model="large", arm="a", latency_ms=12.0)
    assert f.made["turnout_decisions"].calls == [] and f.made["turnout_errors"].calls == []
    # histograms are observed per request: Ray takes one observation per call
    assert [v for v, _ in f.made["turnout_decision_latency_ms"].calls] == [0.5] * 4
    assert f.made["turnout_request_latency_ms"].calls == [(12.0, {"model": "large", "arm": "a"})]
    m.flush()
    tags = {"category": "code", "arm": "a", "policy": "epsilon_greedy"}
    assert sorted(f.made["turnout_decisions"].calls, key=lambda c: c[0]) == [
        (1.0, {"model": "small", **tags}), (3.0, {"model": "large", **tags})]
    assert f.made["turnout_cache_lookups"].calls == [(3.0, {"tier": "exact", "hit": "false", "arm": "a"})]
    assert f.made["turnout_errors"].calls == [(2.0, {"kind": "bad_request", "model": ""})]
    m.flush()  # nothing new: no calls
    assert len(f.made["turnout_decisions"].calls) == 2


def test_a_record_after_the_period_flushes_everything_pending() -> None:
    f = Factory()
    m = GatewayMetrics(f, flush_s=1e-9)
    _decide(m)
    _decide(m, hit=True)
    assert [v for v, _ in f.made["turnout_decisions"].calls] == [1.0, 1.0]
    assert [t["hit"] for _, t in f.made["turnout_cache_lookups"].calls] == ["false", "true"]


def test_unbatched_counters_record_at_once() -> None:
    f = Factory()
    m = GatewayMetrics(f)
    _decide(m)
    m.failover("large", "medium")
    m.reload("a", "loaded")
    assert len(f.made["turnout_decisions"].calls) == 1
    assert f.made["turnout_failovers"].calls == [(1.0, {"from_model": "large", "to_model": "medium"})]
    assert f.made["turnout_bundle_reloads"].calls == [(1.0, {"arm": "a", "outcome": "loaded"})]


def test_batched_ray_serve_metrics_flush_outside_a_replica() -> None:
    m = GatewayMetrics(flush_s=3600.0)
    _decide(m)
    m.error("upstream", "large")
    m.flush()
    NullMetrics().flush()


def test_a_tag_set_ray_refuses_is_dropped_alone_and_flush_never_raises() -> None:
    """The flush runs on an unrelated request and at shutdown (before the decision log closes): a bad
    tag set must not raise there, and the other pending counts are still recorded."""
    f = Factory()
    m = GatewayMetrics(f, flush_s=3600.0)
    m.error("timeout", None)  # type: ignore[arg-type]  # Ray: "Tag values must be str"
    m.error("refused", "large")
    refused = f.made["turnout_errors"]

    def strict_inc(value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        if any(not isinstance(v, str) for v in (tags or {}).values()):
            raise TypeError("Tag values must be str")
        refused.calls.append((value, dict(tags or {})))

    refused.inc = strict_inc  # type: ignore[method-assign]
    m.flush()
    assert refused.calls == [(1.0, {"kind": "refused", "model": "large"})]


def test_metrics_record_decisions_cache_latency_and_errors() -> None:
    f = Factory()
    m = GatewayMetrics(f)
    m.decision(model="large", category="code", arm="b", policy="epsilon_greedy", tier="exact", hit=True, decision_ms=0.4)
    m.decision(model="small", category="chat", arm="a", policy="fallback", tier="skip", hit=False, decision_ms=0.2)
    m.error("rate_limited")
    m.failover("large", "medium")
    m.completed(model="large", arm="b", latency_ms=12.0)
    assert f.made["turnout_decisions"].calls == [
        (1.0, {"model": "large", "category": "code", "arm": "b", "policy": "epsilon_greedy"}),
        (1.0, {"model": "small", "category": "chat", "arm": "a", "policy": "fallback"})]
    assert f.made["turnout_cache_lookups"].calls == [(1.0, {"tier": "exact", "hit": "true", "arm": "b"})]
    assert [v for v, _ in f.made["turnout_decision_latency_ms"].calls] == [0.4, 0.2]
    assert f.made["turnout_errors"].calls == [(1.0, {"kind": "rate_limited", "model": ""})]
    assert f.made["turnout_failovers"].calls == [(1.0, {"from_model": "large", "to_model": "medium"})]
    assert f.made["turnout_request_latency_ms"].calls == [(12.0, {"model": "large", "arm": "b"})]


def test_metrics_work_with_ray_serve_metrics_outside_a_replica() -> None:
    """The real ray.serve.metrics classes accept our names, tags and boundaries (no cluster needed)."""
    m = GatewayMetrics()
    m.decision(model="large", category="code", arm="a", policy="epsilon_greedy", tier="exact", hit=False,
               decision_ms=0.3)
    m.error("upstream", "large")
