"""``Router``: one request in, one ``Decision`` out -- category, cache tier, model, propensity.

Pure Python + onnxruntime. The request path never raises for a model problem: an unusable classifier
or policy output falls back to the configured fallback model with propensity 1 and
``policy="fallback"`` (counted in ``Router.n_fallbacks``), never to the cheapest model.

Order of a decision: classify -> low confidence? fallback -> cache tier + lookup (a hit ends it)
-> policy heads for the allowed models -> + online correction (bounded) -> utility under the
request's preference -> exploration draws the model and records its exact propensity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router.bundle import Bundle, load_bundle
from router.cache import CacheHit, CachePolicy, ResponseCache
from router.classifier import CategoryClassifier
from router.config import Preference, RouterConfig
from router.features import featurize
from router.online import OnlineCorrection
from router.onnx_session import make_session
from router.policy import PolicyScorer, choose, utilities
from router.request import Request
from router.types import CacheTier


@dataclass(frozen=True, slots=True)
class Decision:
    request_id: str
    category: str
    category_probs: tuple[float, ...]
    confidence: float
    ood: bool
    fallback: bool
    cache_tier: CacheTier
    cache_hit: CacheHit | None
    model: str
    candidates: tuple[str, ...]
    action_probs: tuple[float, ...]
    propensity: float
    policy: str
    features: tuple[float, ...]
    bundle_version: str
    decision_ms: float
    predicted_quality: dict[str, float] = field(default_factory=dict)


class Router:
    """Builds its ONNX sessions once. ``decide`` is cheap and safe to call concurrently
    (onnxruntime sessions are thread-safe for ``run``); ``observe`` updates the online correction."""

    def __init__(self, bundle: Bundle, *, cache: ResponseCache | None = None, config: RouterConfig | None = None) -> None:
        m = bundle.manifest
        self.bundle = bundle
        self.config = config or m.router
        self.classifier = CategoryClassifier.from_files(bundle.path, m.classifier)
        self.scorer = PolicyScorer(make_session(bundle.file("policy.onnx")), m.policy)
        self.online = OnlineCorrection(m.policy.online)
        self.cache = cache if cache is not None else ResponseCache(CachePolicy.load(bundle.file("cache_policy.json")))
        self.n_fallbacks = 0

    @classmethod
    def from_path(cls, path: str | Path) -> Router:
        return cls(load_bundle(path))

    @property
    def version(self) -> str:
        return self.bundle.version

    def decide(self, request: Request, *, now_s: float, rng: np.random.Generator,
               preference: Preference | None = None) -> Decision:
        t0 = time.perf_counter()
        cfg = self.config
        probs, ood = self._classify(request.prompt)
        finite = probs is not None
        if probs is None:  # unusable classifier output: fallback, with no category evidence
            probs = np.zeros(len(cfg.taxonomy), dtype=np.float32)
        top = int(np.argmax(probs))
        category, confidence = cfg.taxonomy[top], float(probs[top])
        features = featurize(request.prompt, probs, request.n_turns)
        fallback = not finite or ood or confidence < cfg.min_confidence
        tier: CacheTier = "skip" if fallback else self.cache.policy.for_category(category).tier
        hit = self.cache.lookup(request.tenant, category, tier, request.conversation, now_s)
        common: dict[str, Any] = dict(
            request_id=request.request_id, category=category, category_probs=tuple(probs.tolist()),
            confidence=confidence, ood=ood, fallback=fallback, cache_tier=tier, cache_hit=hit,
            features=tuple(features.tolist()), bundle_version=self.version)
        if hit is not None:
            return Decision(**common, model=hit.model, candidates=(hit.model,), action_probs=(1.0,), propensity=1.0,
                            policy="cache", decision_ms=_ms(t0))
        if fallback:
            return self._fallback(common, t0)
        try:
            return self._choose(category, features, common, t0, rng, preference or request.preference or cfg.preference)
        except Exception:  # a scoring failure must not fail the request; count it and fall back
            self.n_fallbacks += 1
            return self._fallback(common, t0)

    def _classify(self, prompt: str) -> tuple[np.ndarray | None, bool]:
        """(category probabilities, out-of-distribution?); probabilities are None (counted) when the
        classifier fails or returns NaN/inf."""
        try:
            out = self.classifier.predict([prompt])
            probs, ood = out.probs[0], bool(out.is_ood[0])
        except Exception:
            probs, ood = None, False
        if probs is None or not np.isfinite(probs.sum()):
            self.n_fallbacks += 1
            return None, False
        return probs, ood

    def observe(self, decision: Decision, quality: float) -> None:
        """Feed an observed quality back into the online correction (policy decisions only)."""
        predicted = decision.predicted_quality.get(decision.model)
        if decision.policy not in ("fallback", "cache", "pinned") and predicted is not None:
            self.online.observe(decision.category, decision.model, predicted, quality)

    def remember(self, request: Request, decision: Decision, answer: str, now_s: float) -> None:
        """Store a fresh model answer in the cache tier the decision chose."""
        if decision.cache_hit is None and decision.cache_tier != "skip":
            self.cache.insert(request.tenant, decision.category, decision.cache_tier, request.conversation,
                              answer, decision.model, now_s)

    def _choose(self, category: str, features: np.ndarray, common: dict[str, Any], t0: float,
                rng: np.random.Generator, pref: Preference) -> Decision:
        info = self.scorer.info
        allowed = [m for m in self.config.allowed_models(category) if m in info.models]
        idx = [info.models.index(m) for m in allowed]
        heads = self.scorer.predict(features).take(idx)
        if not np.isfinite(heads.quality.sum()):
            raise ValueError("policy returned non-finite quality")
        corrected = type(heads)(heads.quality + self.online.adjustment(category, allowed), heads.cost_usd,
                                heads.latency_ms)
        util = utilities(corrected, pref, info.ref_cost_usd, info.ref_latency_ms)
        c = choose(allowed, util, self.config.exploration, rng)
        return Decision(**common, model=c.model, candidates=c.candidates, action_probs=c.action_probs,
                        propensity=c.propensity, policy=self.config.exploration.kind, decision_ms=_ms(t0),
                        predicted_quality=dict(zip(allowed, heads.quality.tolist())))

    def _fallback(self, common: dict[str, Any], t0: float) -> Decision:
        m = self.config.fallback_model
        return Decision(**common, model=m, candidates=(m,), action_probs=(1.0,), propensity=1.0,
                        policy="fallback", decision_ms=_ms(t0))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
