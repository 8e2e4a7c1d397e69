"""Overload control (serving.overload) through GatewayCore with a fake model caller: reject with 429 +
Retry-After, move to the next model of the ranking, stale stats ignored, no overload -> untouched."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.bundle import Bundle
from router.decision import Router
from router.log_schema import read_logs
from router.replica import STATS_KEYS, ReplicaRequest
from serving.backends import BackendResult, ModelReply
from serving.config import ServeConfig, load_serve_config
from serving.decision_log import DecisionLogWriter
from serving.gateway import GatewayCore, Reply
from serving.overload import OverloadConfig, OverloadGuard, queue_ttft_ms
from serving.resilience import failover_order
from serving.tenants import DEFAULT_TENANT

PROMPT = "Write a Python function that reverses a linked list"
SLO_MS = 1000.0
# queue estimate: 500 + (2 waiting + (9 + 1 - 4) over the slots) * 1000 / 9 = 1388.9 ms > SLO
BUSY = {"num_ongoing": 9, "num_waiting": 2, "ewma_latency_ms": 1000.0, "ewma_ttft_ms": 500.0}
IDLE = {"num_ongoing": 0, "ewma_latency_ms": 1000.0, "ewma_ttft_ms": 200.0}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeCaller:
    def __init__(self, stats: dict[str, Any] | None = None) -> None:
        self.stats = stats or dict(IDLE)
        self.calls: list[str] = []

    async def __call__(self, model: str, body: dict[str, Any], category: str) -> ModelReply:
        self.calls.append(model)
        return ModelReply(BackendResult(f"answer from {model}", 12, 5.0, 20.0, 0.75), f"{model}#r1", dict(self.stats))


@pytest.fixture
def log(tmp_path: Path) -> DecisionLogWriter:
    return DecisionLogWriter(tmp_path / "logs", prefix="decisions-test", flush_rows=1000, flush_s=3600.0)


def _guard(bundle: Bundle, action: str, clock: Clock, scorer: Any = None) -> OverloadGuard:
    models = bundle.manifest.router.model_names
    return OverloadGuard(OverloadConfig(action=action, slo_ttft_ms=SLO_MS, stale_after_s=5.0),  # type: ignore[arg-type]
                         replicas={m: 1 for m in models}, slots={m: 4 for m in models}, scorer=scorer, clock=clock)


def _core(bundle: Bundle, log: DecisionLogWriter, guard: OverloadGuard, caller: FakeCaller) -> GatewayCore:
    return GatewayCore(Router(bundle), log, caller, seed=0, overload=guard)


def _chat(core: GatewayCore, text: str = PROMPT, **extra: object) -> Reply:
    body = {"messages": [{"role": "user", "content": text}], **extra}
    return asyncio.run(core.chat(json.dumps(body).encode("utf-8")))


@pytest.fixture(scope="module")
def expected(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The decision a fresh ``GatewayCore(seed=0)`` makes for PROMPT (same router, same rng stream)."""
    log = DecisionLogWriter(tmp_path_factory.mktemp("expected"), prefix="d", flush_rows=1000, flush_s=3600.0)
    core = GatewayCore(Router(bundle), log, FakeCaller(), seed=0)
    request, _ = core._request({"messages": [{"role": "user", "content": PROMPT}]}, DEFAULT_TENANT)
    return core._decide(core.arm, request, None)


def _rows(log: DecisionLogWriter) -> list[dict[str, Any]]:
    log.close()
    return read_logs(log.out_dir).to_pylist()


def test_queue_estimate_by_hand() -> None:
    assert queue_ttft_ms(BUSY, slots=4) == pytest.approx(500.0 + (2 + 6) * 1000.0 / 9)
    assert queue_ttft_ms(IDLE, slots=4) == 200.0  # nothing ahead: the replica's own TTFT
    assert queue_ttft_ms({"num_ongoing": 3}, slots=4) is None  # no latency: cannot judge


def test_reject_is_a_logged_429_with_retry_after(bundle: Bundle, log: DecisionLogWriter) -> None:
    clock = Clock()
    guard = _guard(bundle, "reject", clock)
    caller = FakeCaller(stats=BUSY)
    core = _core(bundle, log, guard, caller)
    first = _chat(core, "Translate 'good morning' into French")  # no stats yet: admitted; its reply teaches
    assert first.status == 200
    served = first.body["model"]
    assert guard.verdict(served, ReplicaRequest(10)).overloaded
    for m in bundle.manifest.router.model_names:
        guard.observe(m, f"{m}#r1", BUSY)
    reply = _chat(core)
    assert reply.status == 429 and reply.body["error"]["type"] == "overloaded_error"
    # predicted 1388.9 ms vs SLO 1000 ms: the excess drains in ceil(0.389) = 1 s
    assert reply.headers["Retry-After"] == "1"
    assert "1000 ms TTFT SLO" in reply.body["error"]["message"]
    assert len(caller.calls) == 1  # the rejected request never reached a model
    rejected = _rows(log)[-1]
    assert rejected["error"].startswith("overloaded") and rejected["latency_ms"] is None


def test_next_model_moves_to_the_next_ranked_model_logged_as_overload(bundle: Bundle, log: DecisionLogWriter,
                                                                      expected: Any) -> None:
    order = failover_order(expected, 3)
    assert len(order) >= 2, "the test needs a decision with an alternative"
    clock = Clock()
    guard = _guard(bundle, "next_model", clock)
    for m in bundle.manifest.router.model_names:
        guard.observe(m, f"{m}#r1", BUSY if m == expected.model else IDLE)
    caller = FakeCaller()
    reply = _chat(_core(bundle, log, guard, caller))
    assert reply.status == 200
    t = reply.body["turnout"]
    assert (t["model"], t["policy"], t["propensity"]) == (order[1], "overload", 1.0)
    assert caller.calls == [order[1]]
    (row,) = _rows(log)
    assert (row["model"], row["policy"], row["propensity"]) == (order[1], "overload", 1.0)
    assert row["candidates"][0] == order[1] and row["action_probs"][0] == 1.0 and row["error"] is None


def test_next_model_rejects_when_every_ranked_model_is_overloaded(bundle: Bundle, log: DecisionLogWriter) -> None:
    clock = Clock()
    guard = _guard(bundle, "next_model", clock)
    for m in bundle.manifest.router.model_names:
        guard.observe(m, f"{m}#r1", BUSY)
    caller = FakeCaller()
    reply = _chat(_core(bundle, log, guard, caller))
    assert reply.status == 429 and "Retry-After" in reply.headers
    assert caller.calls == []


def test_pinned_model_is_rejected_not_moved(bundle: Bundle, log: DecisionLogWriter) -> None:
    guard = _guard(bundle, "next_model", Clock())
    guard.observe("large", "large#r1", BUSY)
    caller = FakeCaller()
    reply = _chat(_core(bundle, log, guard, caller), model="large")
    assert reply.status == 429 and caller.calls == []


def test_stale_stats_are_ignored(bundle: Bundle, log: DecisionLogWriter) -> None:
    clock = Clock()
    guard = _guard(bundle, "reject", clock)
    for m in bundle.manifest.router.model_names:
        guard.observe(m, f"{m}#r1", BUSY)
    clock.t += 5.1  # older than stale_after_s = 5
    caller = FakeCaller()
    reply = _chat(_core(bundle, log, guard, caller))
    assert reply.status == 200 and len(caller.calls) == 1
    # a snapshot taken long before its reply arrived is as old as its ``ts``
    guard.observe("large", "large#r1", {**BUSY, "ts": clock.t - 6.0})
    assert guard.board.fresh("large", 5.0) == []
    guard.observe("large", "large#r1", {**BUSY, "ts": clock.t - 1.0})
    assert guard.verdict("large", ReplicaRequest(10)).overloaded


def test_no_overload_leaves_the_decision_untouched(bundle: Bundle, log: DecisionLogWriter, expected: Any) -> None:
    guard = _guard(bundle, "next_model", Clock())
    for m in bundle.manifest.router.model_names:
        guard.observe(m, f"{m}#r1", IDLE)
    reply = _chat(_core(bundle, log, guard, FakeCaller()))
    t = reply.body["turnout"]
    assert reply.status == 200
    assert (t["model"], t["policy"], t["propensity"]) == (expected.model, expected.policy,
                                                          pytest.approx(expected.propensity))


def test_a_replica_without_stats_keeps_the_model_open() -> None:
    clock = Clock()
    guard = OverloadGuard(OverloadConfig(action="reject", slo_ttft_ms=SLO_MS), replicas={"large": 2},
                          slots={"large": 4}, clock=clock)
    guard.observe("large", "large#r1", BUSY)
    assert not guard.verdict("large", ReplicaRequest(10)).overloaded  # the second replica may be idle
    guard.observe("large", "large#r2", BUSY)
    v = guard.verdict("large", ReplicaRequest(10))
    assert v.overloaded and v.retry_after_s == 1


class FakeScorer:
    """Predicts log(3 s) for every row: the learned path must turn it into 3000 ms."""

    def __init__(self) -> None:
        self.rows = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.rows += len(x)
        return np.full(len(x), math.log(3.0), dtype=np.float32)


def test_learned_scorer_is_used_for_engine_stats_only() -> None:
    scorer = FakeScorer()
    guard = OverloadGuard(OverloadConfig(action="reject", slo_ttft_ms=SLO_MS), replicas={"m": 2},
                          slots={"m": 4}, scorer=scorer, clock=Clock())  # type: ignore[arg-type]
    engine = {k: 1.0 for k in STATS_KEYS} | IDLE
    guard.observe("m", "m#r1", engine)
    guard.observe("m", "m#r2", IDLE)  # no engine keys: queue estimate (200 ms)
    preds = guard.predicted_ttft_ms("m", ReplicaRequest(100))
    assert preds is not None and sorted(preds) == pytest.approx([200.0, 3000.0], rel=1e-5)
    assert scorer.rows == 1
    assert not guard.verdict("m", ReplicaRequest(100)).overloaded  # the idle replica is under the SLO
    guard.observe("m", "m#r2", engine)
    v = guard.verdict("m", ReplicaRequest(100))
    assert v.overloaded and v.retry_after_s == 2  # (3000 - 1000) ms drain


def test_config_section(configs_dir: Path) -> None:
    cfg = ServeConfig.model_validate({"bundle": "b", "log_dir": "l",
                                      "overload": {"action": "next_model", "slo_ttft_ms": 800}})
    assert cfg.overload.action == "next_model" and cfg.overload.stale_after_s == 10.0
    assert ServeConfig.model_validate({"bundle": "b", "log_dir": "l"}).overload.action == "off"
    assert ServeConfig.model_validate({"bundle": "b", "log_dir": "l", "overload": {"action": False}}).overload.action == "off"
    assert load_serve_config(configs_dir / "serve.yaml").overload.slo_ttft_ms > 0
    with pytest.raises(ValueError, match="action"):
        ServeConfig.model_validate({"bundle": "b", "log_dir": "l", "overload": {"action": "drop"}})
    with pytest.raises(ValueError, match="min_retry_after_s"):
        OverloadConfig(min_retry_after_s=30, max_retry_after_s=10)


def test_build_guard_from_the_serve_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from serving.overload import build_overload_guard
    from training.replica_eval import train_quick_scorer

    base = {"bundle": "b", "log_dir": "l", "base_dir": str(tmp_path), "models": {"num_replicas": 1},
            "model_overrides": {"large": {"num_replicas": 3, "max_ongoing_requests": 8}}}
    assert build_overload_guard(ServeConfig.model_validate(base), ["small", "large"]) is None  # off by default
    on = {**base, "overload": {"action": "reject", "slo_ttft_ms": SLO_MS}}
    guard = build_overload_guard(ServeConfig.model_validate(on), ["small", "large"])
    assert guard is not None and guard.scorer is None
    assert (guard.replicas, guard.slots) == ({"small": 1, "large": 3}, {"small": 32, "large": 8})
    # learned replica routing with a broken model dir: logged, queue estimate, the gateway still starts
    broken = {**on, "replica_routing": {"kind": "learned", "model": "missing"}}
    with caplog.at_level("ERROR"):
        assert build_overload_guard(ServeConfig.model_validate(broken), ["small"]).scorer is None  # type: ignore[union-attr]
    assert "cannot load the replica scorer" in caplog.text
    train_quick_scorer(tmp_path / "rm", n_requests=600)
    learned = build_overload_guard(ServeConfig.model_validate(
        {**on, "replica_routing": {"kind": "learned", "model": "rm"}}), ["small"])
    assert learned is not None and learned.scorer is not None
    engine = {"num_ongoing": 30, "num_waiting": 40, "running_tokens": 390_000, "waiting_tokens": 500_000,
              "kv_used_frac": 0.97, "kv_capacity_tokens": 400_000, "step_ms": 150.0, "queued_kv_tokens": 0}
    learned.observe("small", "small#r1", engine)
    (pred,) = learned.predicted_ttft_ms("small", ReplicaRequest(2000))  # type: ignore[misc]
    x = np.array([[30, 40, 390_000, 500_000, 0.97, 10_000, 150.0, 0, 2000, 0, 2000, 502_000, 502_000 * 0.15, 0.2, -8000]],
                 dtype=np.float32)
    assert pred == pytest.approx(1000.0 * math.exp(float(learned.scorer.predict(x)[0])), rel=1e-5)
