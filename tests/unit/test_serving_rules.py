"""Serving rules without Ray or I/O: token bucket, tenants/keys, A/B assignment, circuit breaker,
retry backoff, failover order, metrics recording, feedback validation, bundle watcher."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from router.decision import Decision
from router.errors import RequestError
from serving.experiments import Arm, ExperimentConfig, assign_arm, assignment_key, hash_unit
from serving.gateway import parse_feedback
from serving.metrics import GatewayMetrics
from serving.reload import BundleWatcher, manifest_signature
from serving.resilience import BreakerConfig, CircuitBreaker, RetryPolicy, failover_order
from serving.tenants import AuthError, RateLimit, TenantConfig, TenantDirectory, TokenBucket, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# --- token bucket, tenants ------------------------------------------------------------------------------

def test_token_bucket_admits_burst_then_refills_at_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token at 2/s
    clock.t += 0.25
    assert bucket.take() == pytest.approx(0.25)
    clock.t += 0.25
    assert bucket.take() == 0.0
    clock.t += 100  # refill is capped at the burst
    assert [bucket.take() for _ in range(4)][-1] > 0


def test_retry_after_header_is_whole_seconds_and_never_zero() -> None:
    assert [retry_after_header(s) for s in (0.01, 1.0, 1.2)] == ["1", "1", "2"]


def test_tenants_keys_from_config_and_env() -> None:
    d = TenantDirectory({"a": TenantConfig(api_keys=("k-a",)), "b": TenantConfig(api_key_envs=("B_KEY",), admin=True)},
                        env={"B_KEY": "k-b"})
    assert d.keys_required
    assert d.authenticate("Bearer k-a") == "a" and d.authenticate("bearer  k-b ") == "b"
    assert d.authenticate(None, x_api_key="k-b") == "b"
    with pytest.raises(AuthError, match="missing API key"):
        d.authenticate(None)
    with pytest.raises(AuthError, match="invalid API key"):
        d.authenticate("Bearer k-c")
    with pytest.raises(AuthError, match="missing"):
        d.authenticate("Basic k-a")
    assert d.is_admin("b") and not d.is_admin("a")


def test_missing_key_env_var_is_named() -> None:
    with pytest.raises(ValueError, match="environment variable ACME_KEY"):
        TenantDirectory({"acme": TenantConfig(api_key_envs=("ACME_KEY",))}, env={})


def test_shared_key_between_tenants_is_refused() -> None:
    with pytest.raises(ValueError, match="share an API key"):
        TenantDirectory({"a": TenantConfig(api_keys=("k",)), "b": TenantConfig(api_keys=("k",))}, env={})


def test_no_keys_means_auth_off_and_default_tenant() -> None:
    d = TenantDirectory({}, default_rate_limit=RateLimit(requests_per_s=1, burst=1), env={})
    assert not d.keys_required and d.authenticate(None) == "default" and d.is_admin("default")
    assert d.retry_after("default") == 0.0 and d.retry_after("default") > 0


def test_rate_limits_are_per_tenant() -> None:
    clock = Clock()
    d = TenantDirectory({"slow": TenantConfig(api_keys=("s",), rate_limit=RateLimit(requests_per_s=1, burst=2)),
                         "free": TenantConfig(api_keys=("f",))}, env={}, clock=clock)
    assert [d.retry_after("slow") > 0 for _ in range(3)] == [False, False, True]
    assert all(d.retry_after("free") == 0.0 for _ in range(50))  # no limit configured


# --- A/B assignment ---------------------------------------------------------------------------------------

ARMS = (Arm(name="control", bundle="x", weight=3.0), Arm(name="treatment", bundle="y", weight=1.0))


def test_assignment_is_sticky_and_follows_weights() -> None:
    keys = [f"user-{i}" for i in range(4000)]
    first = [assign_arm(k, ARMS) for k in keys]
    assert first == [assign_arm(k, ARMS) for k in keys]
    share = Counter(first)["treatment"] / len(keys)
    assert 0.22 < share < 0.28  # 25% expected; binomial sd 0.7%


def test_assignment_key_precedence() -> None:
    assert assignment_key("user", "t", "hdr", "body") == "hdr"
    assert assignment_key("user", "t", None, "body") == "body"
    assert assignment_key("user", "t", None, None) == "t"
    assert assignment_key("tenant", "t", "hdr", "body") == "t"
    # contract 4: sha256 of the raw key, first 8 bytes big-endian, over the cumulative weights
    import hashlib

    assert hash_unit("u-1") == int.from_bytes(hashlib.sha256(b"u-1").digest()[:8], "big") / 2.0**64
    assert 0 <= hash_unit("x") < 1 and hash_unit("x") == hash_unit("x")


def test_experiment_rejects_duplicate_arm_names() -> None:
    with pytest.raises(ValueError, match="repeated: a"):
        ExperimentConfig(arms=(Arm(name="a", bundle="x"), Arm(name="a", bundle="y")))


# --- circuit breaker, backoff, failover order ----------------------------------------------------------

def test_breaker_opens_after_threshold_then_half_opens_once() -> None:
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(failure_threshold=3, reset_after_s=10), clock)
    for _ in range(2):
        b.record_failure()
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "open" and not b.allow()
    clock.t += 10
    assert b.state == "half_open" and b.allow() and not b.allow()  # exactly one trial
    b.record_failure()  # the trial failed: open again for another reset_after_s
    assert b.state == "open" and not b.allow()
    clock.t += 10
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.failures == 0 and b.allow() and b.allow()


def test_a_trial_without_a_verdict_never_locks_the_circuit() -> None:
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(failure_threshold=1, reset_after_s=10), clock)
    b.record_failure()
    clock.t += 10
    assert b.allow() and not b.allow()
    b.release()  # the trial was cancelled by its client / refused as a client mistake
    assert b.state == "half_open" and b.allow()  # the next request may try again
    clock.t += 10  # a trial that never reported at all expires after reset_after_s
    assert b.allow()
    b.record_success()
    assert b.state == "closed"


def test_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(BreakerConfig(failure_threshold=2), Clock())
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"


def test_backoff_has_full_jitter_under_an_exponential_cap() -> None:
    p = RetryPolicy(base_backoff_s=0.1, max_backoff_s=0.3)
    rng = random.Random(0)
    draws = {n: [p.backoff_s(n, rng) for _ in range(300)] for n in (1, 2, 3, 6)}
    assert max(draws[1]) <= 0.1 and max(draws[2]) <= 0.2 and max(draws[6]) <= 0.3
    assert min(draws[3]) < 0.05 < max(draws[3])  # spread, not a constant
    assert len({round(x, 6) for x in draws[2]}) > 250


def _decision(model: str, candidates: tuple[str, ...], probs: tuple[float, ...], pq: dict[str, float]) -> Decision:
    return Decision(request_id="r", category="code", category_probs=(1.0,), confidence=1.0, ood=False, fallback=False,
                    cache_tier="skip", cache_hit=None, model=model, candidates=candidates, action_probs=probs,
                    propensity=probs[candidates.index(model)], policy="epsilon_greedy", features=(0.0,),
                    bundle_version="v", decision_ms=0.1, predicted_quality=pq)


def test_failover_order_follows_the_policy_ranking() -> None:
    d = _decision("small", ("small", "medium", "large"), (0.1, 0.1, 0.8), {"small": 0.5, "medium": 0.7, "large": 0.9})
    assert failover_order(d, 3) == ["small", "large", "medium"]  # drawn model, then by probability
    tie = _decision("large", ("small", "medium", "large"), (0.05, 0.05, 0.9), {"small": 0.5, "medium": 0.7, "large": 0.9})
    assert failover_order(tie, 3) == ["large", "medium", "small"]  # equal probability: predicted quality
    assert failover_order(tie, 2) == ["large", "medium"]
    assert failover_order(_decision("large", ("large",), (1.0,), {}), 3) == ["large"]  # pinned/fallback


# --- feedback validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field", "message"), [
    ({"quality": 0.5}, "request_id", "missing required field 'request_id'"),
    ({"request_id": "", "quality": 0.5}, "request_id", "'request_id' must be a non-empty string"),
    ({"request_id": 7, "quality": 0.5}, "request_id", "'request_id' must be a non-empty string"),
    ({"request_id": "x" * 129, "quality": 0.5}, "request_id", "at most 128 characters"),
    ({"request_id": "r"}, "quality", "missing required field 'quality'"),
    ({"request_id": "r", "quality": 1.5}, "quality", "'quality' must be a number in [0, 1]; got 1.5"),
    ({"request_id": "r", "quality": "0.5"}, "quality", "got '0.5'"),
    ({"request_id": "r", "quality": True}, "quality", "got True"),
    ({"request_id": "r", "quality": float("nan")}, "quality", "got nan"),
    ({"request_id": "r", "quality": 0.5, "score": 1}, "score", "unknown field(s) ['score']"),
])
def test_feedback_validation_names_the_field(body: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(RequestError, match=None) as e:
        parse_feedback(body)
    assert e.value.field == field and message in str(e.value) and e.value.status == 400


def test_feedback_row_shape() -> None:
    row = parse_feedback({"request_id": "abc", "quality": 1})
    assert row["request_id"] == "abc" and row["quality"] == 1.0 and isinstance(row["quality"], float)
    assert row["timestamp_s"] > 0


# --- bundle watcher -----------------------------------------------------------------------------------------

def test_watcher_reports_each_manifest_change_once(tmp_path: Path) -> None:
    w = BundleWatcher(tmp_path)
    assert not w.changed()  # no manifest at all
    (tmp_path / "manifest.json").write_text('{"v": 1}')
    assert w.changed() and not w.changed()
    (tmp_path / "manifest.json").write_text('{"v": 2}')
    assert manifest_signature(tmp_path) is not None and w.changed() and not w.changed()
