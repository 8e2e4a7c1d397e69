"""Gateway metrics, exported through Ray's Prometheus endpoint.

``GatewayMetrics`` records through ``ray.serve.metrics`` (Counter/Histogram) inside a Serve replica;
Ray adds the ``ray_`` prefix (counters also get ``_total``) and the tags ``deployment``, ``replica``,
``application``. Each Ray node serves them as Prometheus text on its metrics export port
(``metrics_port`` in the serve config; ``ray start --metrics-export-port``); the gateway's
``GET /metrics`` relays its own node's page. Tests pass a fake ``factory`` to check what is recorded.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

LATENCY_BOUNDARIES_MS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


def _ray_factory() -> Any:
    from ray.serve import metrics

    return SimpleNamespace(Counter=metrics.Counter, Histogram=metrics.Histogram)


class GatewayMetrics:
    def __init__(self, factory: Any = None) -> None:
        f = factory or _ray_factory()
        self.decisions = f.Counter("turnout_decisions", description="routing decisions per model/category/arm",
                                   tag_keys=("model", "category", "arm", "policy"))
        self.cache = f.Counter("turnout_cache_lookups", description="cache lookups by tier and outcome",
                               tag_keys=("tier", "hit", "arm"))
        self.decision_latency = f.Histogram("turnout_decision_latency_ms", description="Router.decide time",
                                            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("arm",))
        self.request_latency = f.Histogram("turnout_request_latency_ms", description="end-to-end gateway latency",
                                           boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("model", "arm"))
        self.errors = f.Counter("turnout_errors", description="failed or refused requests by kind",
                                tag_keys=("kind", "model"))
        self.failovers = f.Counter("turnout_failovers", description="requests served by a model other than chosen",
                                   tag_keys=("from_model", "to_model"))
        self.reloads = f.Counter("turnout_bundle_reloads", description="bundle reload attempts",
                                 tag_keys=("arm", "outcome"))

    def decision(self, *, model: str, category: str, arm: str, policy: str, tier: str, hit: bool,
                 decision_ms: float) -> None:
        self.decisions.inc(1.0, tags={"model": model, "category": category, "arm": arm, "policy": policy})
        if tier != "skip":
            self.cache.inc(1.0, tags={"tier": tier, "hit": "true" if hit else "false", "arm": arm})
        self.decision_latency.observe(decision_ms, tags={"arm": arm})

    def completed(self, *, model: str, arm: str, latency_ms: float) -> None:
        self.request_latency.observe(latency_ms, tags={"model": model, "arm": arm})

    def error(self, kind: str, model: str = "") -> None:
        self.errors.inc(1.0, tags={"kind": kind, "model": model})

    def failover(self, from_model: str, to_model: str) -> None:
        self.failovers.inc(1.0, tags={"from_model": from_model, "to_model": to_model})

    def reload(self, arm: str, outcome: str) -> None:
        self.reloads.inc(1.0, tags={"arm": arm, "outcome": outcome})


class NullMetrics(GatewayMetrics):
    """Records nothing (GatewayCore outside Serve, unit tests that do not look at metrics)."""

    def __init__(self) -> None:  # noqa: D107 - no instruments
        pass

    def decision(self, **_: Any) -> None:
        pass

    def completed(self, **_: Any) -> None:
        pass

    def error(self, kind: str, model: str = "") -> None:
        pass

    def failover(self, from_model: str, to_model: str) -> None:
        pass

    def reload(self, arm: str, outcome: str) -> None:
        pass
