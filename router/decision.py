"""``Router``: one request in, one ``Decision`` out — category, cache tier, model, propensity.

Pure Python + onnxruntime. The request path never raises for a model problem: a failure to score
falls back to the configured fallback model with propensity 1 and ``policy="fallback"`` (counted in
``Router.n_fallbacks``), never to the cheapest model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from router.bundle import Bundle, load_bundle
from router.cache import CacheHit, CachePolicy, ResponseCache
from router.classifier import CategoryClassifier
from router.config import Preference, RouterConfig
from router.features import featurize
from router.onnx_session import make_session
from router.policy import RewardModel, choose, estimate_cost_usd, utilities
from router.request import Request
from router.types import CacheTier


@dataclass(frozen=True, slots=True)
class Decision:
    request_id: str
    category: str
    category_probs: tuple[float, ...]
    confidence: float
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
    """Builds its ONNX sessions once; ``decide`` is safe to call from one thread at a time per session
    (onnxruntime sessions are thread-safe for ``run``)."""

    def __init__(self, bundle: Bundle, *, cache: ResponseCache | None = None, config: RouterConfig | None = None) -> None:
        m = bundle.manifest
        self.bundle = bundle
        self.config = config or m.router
        self.classifier = CategoryClassifier(make_session(bundle.file("classifier.onnx")), m.router.taxonomy)
        self.reward = RewardModel(make_session(bundle.file("policy.onnx")), m.policy.models)
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
        try:
            probs = self.classifier.predict_proba([request.prompt])[0]
            if not np.all(np.isfinite(probs)):
                raise ValueError("classifier returned non-finite probabilities")
        except Exception:  # an unusable classifier output: route safely, count it
            self.n_fallbacks += 1
            probs = np.full(len(cfg.taxonomy), np.nan, dtype=np.float32)
        top = int(np.nanargmax(probs)) if np.isfinite(probs).any() else 0
        category, confidence = cfg.taxonomy[top], float(probs[top])
        features = featurize(request.prompt, np.nan_to_num(probs), request.n_turns)
        fallback = not confidence >= cfg.min_confidence  # NaN confidence -> fallback
        tier: CacheTier = "skip" if fallback else self.cache.policy.for_category(category).tier
        hit = self.cache.lookup(request.tenant, category, tier, request.conversation, now_s)
        common = dict(request_id=request.request_id, category=category,
                      category_probs=tuple(map(float, np.nan_to_num(probs))),
                      confidence=float(np.nan_to_num(confidence)), fallback=fallback, cache_tier=tier, cache_hit=hit,
                      features=tuple(map(float, features)), bundle_version=self.version)
        if hit is not None:
            return Decision(**common, model=hit.model, candidates=(hit.model,), action_probs=(1.0,), propensity=1.0,
                            policy="cache", decision_ms=_ms(t0))
        if fallback:
            return self._fallback(common, t0)
        try:
            return self._choose(request, category, features, common, t0, rng, preference or cfg.preference)
        except Exception:  # a scoring failure must not fail the request; count it and fall back
            self.n_fallbacks += 1
            return self._fallback(common, t0)

    def remember(self, request: Request, decision: Decision, answer: str, now_s: float) -> None:
        """Store a fresh model answer in the cache tier the decision chose."""
        if decision.cache_hit is None and decision.cache_tier != "skip":
            self.cache.insert(request.tenant, decision.category, decision.cache_tier, request.conversation,
                              answer, decision.model, now_s)

    def _choose(self, request: Request, category: str, features: np.ndarray, common: dict, t0: float,
                rng: np.random.Generator, pref: Preference) -> Decision:
        cfg, pol = self.config, self.bundle.manifest.policy
        quality = self.reward.predict(features)[0]
        if not np.all(np.isfinite(quality)):
            raise ValueError("reward model returned non-finite quality")
        allowed = [m for m in cfg.allowed_models(category) if m in pol.models]
        idx = [pol.models.index(m) for m in allowed]
        cost = np.array([estimate_cost_usd(cfg.model(m), request.input_tokens, pol.mean_output_tokens[m]) for m in allowed])
        latency = np.array([pol.mean_latency_ms[m] for m in allowed])
        util = utilities(quality[idx], cost, latency, pref)
        c = choose(allowed, util, cfg.exploration.epsilon, rng)
        return Decision(**common, model=c.model, candidates=c.candidates, action_probs=c.action_probs,
                        propensity=c.propensity, policy=cfg.exploration.kind, decision_ms=_ms(t0),
                        predicted_quality={m: float(quality[i]) for m, i in zip(allowed, idx)})

    def _fallback(self, common: dict, t0: float) -> Decision:
        m = self.config.fallback_model
        return Decision(**common, model=m, candidates=(m,), action_probs=(1.0,), propensity=1.0,
                        policy="fallback", decision_ms=_ms(t0))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
