"""Gateway metrics, exported through Ray's Prometheus endpoint.

``GatewayMetrics`` records through ``ray.serve.metrics`` (Counter/Histogram) inside a Serve replica;
Ray adds the ``ray_`` prefix (counters also get ``_total``) and the tags ``deployment``, ``replica``,
``application``. Each Ray node serves them as Prometheus text on its metrics export port
(``metrics_port`` in the serve config; ``ray start --metrics-export-port``); the gateway's
``GET /metrics`` relays its own node's page. Tests pass a fake ``factory`` to check what is recorded.

With ``flush_s > 0`` (the gateway: 1 s) the per-request counters (decisions, cache lookups, errors)
are summed locally per tag set and handed to Ray at most once per ``flush_s`` per tag set (on the next
record after the period, and from the gateway's periodic task): one Ray call per tag set and period
instead of one or two per request. Ray exports every few seconds anyway, so Prometheus sees the same
totals; a crash loses at most ``flush_s`` of counts. Histograms are recorded per request: Ray's API
takes one observation per call, so batching them would save nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

log = logging.getLogger("ray.serve")
LATENCY_BOUNDARIES_MS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


def _ray_factory() -> Any:
    from ray.serve import metrics

    return SimpleNamespace(Counter=metrics.Counter, Histogram=metrics.Histogram)


class GatewayMetrics:
    def __init__(self, factory: Any = None, flush_s: float = 0.0) -> None:
        f = factory or _ray_factory()
        self.flush_s = flush_s
        self._pending: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}  # (attribute, tags) -> sum
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
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

    def _count(self, counter: str, tags: tuple[tuple[str, str], ...]) -> None:
        """``self.<counter>.inc(1, tags)``, now or summed into the next flush."""
        if self.flush_s <= 0:
            getattr(self, counter).inc(1.0, tags=dict(tags))
            return
        key = (counter, tags)
        with self._lock:
            self._pending[key] = self._pending.get(key, 0.0) + 1.0
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Hand the locally summed counts to Ray (one ``inc`` per counter and tag set). Never raises:
        it runs on whichever request crosses the period and at shutdown, where an exception would hit
        a request that has nothing to do with it or skip closing the decision log; a tag set Ray
        refuses is logged and dropped, the others are still recorded."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = time.monotonic()
        for (counter, tags), value in pending.items():
            try:
                getattr(self, counter).inc(value, tags=dict(tags))
            except Exception as e:  # e.g. a non-string tag value
                log.warning("metric %s%s dropped (%s: %s)", counter, dict(tags), type(e).__name__, e)

    def decision(self, *, model: str, category: str, arm: str, policy: str, tier: str, hit: bool,
                 decision_ms: float) -> None:
        self._count("decisions", (("model", model), ("category", category), ("arm", arm), ("policy", policy)))
        if tier != "skip":
            self._count("cache", (("tier", tier), ("hit", "true" if hit else "false"), ("arm", arm)))
        self.decision_latency.observe(decision_ms, tags={"arm": arm})

    def completed(self, *, model: str, arm: str, latency_ms: float) -> None:
        self.request_latency.observe(latency_ms, tags={"model": model, "arm": arm})

    def error(self, kind: str, model: str = "") -> None:
        self._count("errors", (("kind", kind), ("model", model)))

    def failover(self, from_model: str, to_model: str) -> None:
        self.failovers.inc(1.0, tags={"from_model": from_model, "to_model": to_model})

    def reload(self, arm: str, outcome: str) -> None:
        self.reloads.inc(1.0, tags={"arm": arm, "outcome": outcome})


class NullMetrics(GatewayMetrics):
    """Records nothing (GatewayCore outside Serve, unit tests that do not look at metrics)."""

    def __init__(self) -> None:  # noqa: D107 - no instruments
        pass

    def flush(self) -> None:
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
