"""``Router``: one request in, one ``Decision`` out -- category, cache tier, model, propensity.

Pure Python + onnxruntime. The request path never raises for a model problem: an unusable classifier
or policy output falls back to the configured fallback model with propensity 1 and
``policy="fallback"`` (counted in ``Router.n_fallbacks``), never to the cheapest model.

Order of a decision: classify -> low confidence? fallback -> cache tier + lookup (a hit ends it)
-> policy heads for the allowed models -> + online correction (bounded) -> utility under the
request's preference -> exploration draws the model and records its exact propensity.

Cache lookup and model choice: the lookup runs before the model choice, so a hit costs no policy
inference -- except when ``model_load`` says some model is loaded past the cache's relaxation start
(``CachePolicy.load_adaptation``). Then the model is chosen first and the lookup uses the threshold
relaxed for *that* model's load: the relaxation must follow the model that would actually answer,
and both orders give the same decision whenever nothing is relaxed. The semantic tier embeds the
last user turn once per request; with an ``encoder`` classifier the classifier's embedding is reused
(``SentenceEncoder`` memoises it), otherwise the cache's own encoder runs only for semantic tiers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from router.bundle import Bundle
from router.cache import CacheHit, CachePolicy, ResponseCache, build_response_cache, load_cache_parts
from router.cache_store import CacheStoreSettings
from router.classifier import CategoryClassifier
from router.config import Preference, RouterConfig
from router.features import featurize
from router.online import OnlineCorrection
from router.ood import prepare_text
from router.onnx_session import make_session
from router.policy import HeadPredictions, PolicyScorer, choose, utilities_row
from router.request import Request
from router.throttled_log import ThrottledLog
from router.types import CacheTier

_LOG = logging.getLogger("turnout.router")


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

    def __init__(self, bundle: Bundle, *, cache: ResponseCache | None = None, config: RouterConfig | None = None,
                 cache_store: CacheStoreSettings | None = None) -> None:
        m = bundle.manifest
        self.bundle = bundle
        self.config = config or m.router
        self.classifier = CategoryClassifier.from_files(bundle.path, m.classifier)
        self.scorer = PolicyScorer(make_session(bundle.file("policy.onnx")), m.policy)
        self.online = OnlineCorrection(m.policy.online)
        self.cache = cache if cache is not None else self._build_cache(bundle, cache_store)
        self.n_fallbacks = 0
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()  # request_id -> prompt embedding
        self._candidate_cache: dict[str, tuple[list[str], list[int] | None]] = {}
        self._failures = ThrottledLog(_LOG)

    def _build_cache(self, bundle: Bundle, settings: CacheStoreSettings | None) -> ResponseCache:
        policy = CachePolicy.load(bundle.file("cache_policy.json"))
        files = {name: bundle.file(name) for name in bundle.manifest.files}
        encoder, verifier = load_cache_parts(policy, files, shared_encoder=self.classifier.encoder)
        if not any(p.tier == "semantic" for p in [*policy.categories.values(), policy.default]):
            encoder = None  # nothing to embed: keep the classifier's encoder but skip the cache's
        return build_response_cache(policy, settings, embedder=encoder, verifier=verifier)

    @property
    def version(self) -> str:
        return self.bundle.version

    def decide(self, request: Request, *, now_s: float, rng: np.random.Generator,
               preference: Preference | None = None, model_load: Mapping[str, float] | None = None) -> Decision:
        """``model_load[m]`` = in-flight requests / capacity of model ``m``'s deployment (1.0 = full);
        it only relaxes the cache threshold for an overloaded answering model (see the module doc)."""
        t0 = time.perf_counter()
        prompt = request.prompt
        probs, ood = self._classify(prompt)
        features = featurize(prompt, self._probs_or_zeros(probs), request.n_turns)
        return self._decide_classified(request, probs, ood, features, None, t0, now_s=now_s, rng=rng,
                                       preference=preference, model_load=model_load)

    def decide_batch(self, requests: Sequence[Request], *, now_s: float, rng: np.random.Generator,
                     preference: Preference | None = None,
                     model_load: Mapping[str, float] | None = None) -> list[Decision]:
        """``[decide(r, ...) for r in requests]`` with the same ``rng`` gives the same decisions (draws
        are taken in request order; a unit test pins it), at a lower cost per request: the classifier's
        calibration/OOD arithmetic runs once over the micro-batch and, for tree-ensemble policies, the
        policy runs one ONNX call over all of it (``PolicyScorer.row_separable``: row i of a batch is
        bit-identical to a single-row call). ``decision_ms`` is measured from the start of the batch.
        For throughput (replay, offline evaluation, a batching gateway); ``decide`` stays the
        per-request path."""
        t0 = time.perf_counter()
        classified = self._classify_batch([r.prompt for r in requests])
        features = [featurize(r.prompt, self._probs_or_zeros(probs), r.n_turns)
                    for r, (probs, _) in zip(requests, classified)]
        heads_all = self._heads_batch(features, classified)
        return [self._decide_classified(request, probs, ood, features[i], heads_all[i] if heads_all else None, t0,
                                        now_s=now_s, rng=rng, preference=preference, model_load=model_load)
                for i, (request, (probs, ood)) in enumerate(zip(requests, classified))]

    def _probs_or_zeros(self, probs: list[float] | None) -> list[float]:
        """An unusable classifier output carries no category evidence: all-zero probabilities."""
        return probs if probs is not None else [0.0] * len(self.config.taxonomy)

    def _decide_classified(self, request: Request, probs: list[float] | None, ood: bool, features: np.ndarray,
                           heads: HeadPredictions | None, t0: float, *, now_s: float, rng: np.random.Generator,
                           preference: Preference | None, model_load: Mapping[str, float] | None) -> Decision:
        """Everything after classification, shared by ``decide`` and ``decide_batch``: fallback rule,
        cache tier and lookup (order set by load adaptation, see the module doc), model choice."""
        cfg = self.config
        finite = probs is not None
        p = self._probs_or_zeros(probs)
        top = max(range(len(p)), key=p.__getitem__)  # first maximum, as np.argmax
        category, confidence = cfg.taxonomy[top], p[top]
        fallback = not finite or ood or confidence < cfg.min_confidence
        tier: CacheTier = "skip" if fallback else self.cache.policy.for_category(category).tier
        if tier != "skip" and not self.cache.cacheable(request.prompt):
            tier = "skip"  # empty or huge prompts skip the cache
        common: dict[str, Any] = dict(
            request_id=request.request_id, category=category, category_probs=tuple(p),
            confidence=confidence, ood=ood, fallback=fallback, cache_tier=tier, cache_hit=None,
            features=tuple(features.tolist()), bundle_version=self.version)
        pref = preference or request.preference or cfg.preference
        chosen: Decision | None = None
        load: float | None = None
        if tier != "skip" and model_load and self.cache.policy.load_adaptation.fraction(max(model_load.values())) > 0:
            chosen = self._choose_safely(category, features, common, t0, rng, pref, heads)
            load = model_load.get(chosen.model)
        hit = self._lookup(request, category, tier, now_s, load) if tier != "skip" else None
        if hit is not None:
            self._embeddings.pop(request.request_id, None)
            return Decision(**{**common, "cache_hit": hit}, model=hit.model, candidates=(hit.model,),
                            action_probs=(1.0,), propensity=1.0, policy="cache", decision_ms=_ms(t0))
        if chosen is not None:
            return replace(chosen, decision_ms=_ms(t0))
        return self._choose_safely(category, features, common, t0, rng, pref, heads)

    def _classify_batch(self, prompts: Sequence[str]) -> list[tuple[list[float] | None, bool]]:
        """``_classify`` for many prompts: one call when the classifier is row-separable, else (or when
        the batched call fails) one per prompt."""
        if not self.classifier.row_separable:
            return [self._classify(p) for p in prompts]
        try:
            res = self.classifier.predict(prompts)
        except Exception as e:
            self._failed("batched classifier call (retried per prompt)", e)
            return [self._classify(p) for p in prompts]
        return [self._checked(probs, bool(ood)) for probs, ood in zip(res.probs.tolist(), res.is_ood.tolist())]

    def _heads_batch(self, features: Sequence[np.ndarray], classified: Sequence[tuple[list[float] | None, bool]]
                     ) -> list[HeadPredictions] | None:
        """Policy heads of every request in one ONNX call when that equals per-row calls bit for bit;
        None (each request scores itself in ``_choose``) otherwise or when the batched call fails."""
        if not self.scorer.row_separable or not features:
            return None
        try:
            h = self.scorer.predict_batch(np.stack(features))
        except Exception as e:
            self._failed("batched policy call (retried per request)", e)
            return None
        return [HeadPredictions(h.quality[i], h.cost_usd[i], h.latency_ms[i]) for i in range(len(features))]

    def _choose_safely(self, category: str, features: np.ndarray, common: dict[str, Any], t0: float,
                       rng: np.random.Generator, pref: Preference, heads: HeadPredictions | None = None) -> Decision:
        if common["fallback"]:
            return self._fallback(common, t0)
        try:
            return self._choose(category, features, common, t0, rng, pref, heads)
        except Exception as e:  # a scoring failure must not fail the request; count it and fall back
            self.n_fallbacks += 1
            self._failed("policy scoring (fallback model used)", e)
            return self._fallback(common, t0)

    def _lookup(self, request: Request, category: str, tier: CacheTier, now_s: float, load: float | None) -> CacheHit | None:
        embedding = None
        if tier == "semantic":
            embedding = self._embedding(request)
        return self.cache.lookup(request.tenant, category, tier, request.prompt, now_s, context=cache_context(request),
                                 embedding=embedding, load=load)

    def _embedding(self, request: Request) -> np.ndarray | None:
        """The prompt's embedding, computed once per request (shared with an encoder classifier and
        kept until ``remember`` stores the answer)."""
        cached = self._embeddings.get(request.request_id)
        if cached is not None:
            return cached
        try:
            text = prepare_text(request.prompt, self.classifier.max_chars)
            vec = np.asarray(self.cache.embedder.encode([text])[0], dtype=np.float32)
        except Exception as e:  # an encoder failure is a cache miss, never a failed request
            self._failed("prompt embedding (cache miss)", e)
            return None
        self._embeddings[request.request_id] = vec
        while len(self._embeddings) > 4096:
            self._embeddings.popitem(last=False)
        return vec

    def _classify(self, prompt: str) -> tuple[list[float] | None, bool]:
        """(category probabilities, out-of-distribution?); probabilities are None (counted) when the
        classifier fails or returns NaN/inf."""
        try:
            probs, ood = self.classifier.predict_row(prompt)
        except Exception as e:
            self._failed("classifier (fallback model used)", e)
            self.n_fallbacks += 1
            return None, False
        return self._checked(probs, ood)

    def _checked(self, probs: list[float], ood: bool) -> tuple[list[float] | None, bool]:
        """The classifier's answer, or (None, False) -- counted and logged -- when a probability is NaN/inf."""
        if all(map(math.isfinite, probs)):
            return probs, ood
        self.n_fallbacks += 1
        self._failed("classifier (fallback model used)", ValueError(f"non-finite probabilities {probs}"))
        return None, False

    def _failed(self, what: str, e: Exception) -> None:
        """A swallowed failure, logged through ``router.throttled_log`` (never silent, never a line per request)."""
        self._failures.failed(f"bundle {self.version}: {what}", f"{type(e).__name__}: {e}")

    def observe(self, decision: Decision, quality: float) -> None:
        """Feed an observed quality back into the online correction (policy decisions only)."""
        predicted = decision.predicted_quality.get(decision.model)
        if decision.policy not in ("fallback", "cache", "pinned") and predicted is not None:
            self.online.observe(decision.category, decision.model, predicted, quality)

    def remember(self, request: Request, decision: Decision, answer: str, now_s: float) -> None:
        """Store a fresh model answer in the cache tier the decision chose."""
        embedding = self._embeddings.pop(request.request_id, None)
        if decision.cache_hit is None and decision.cache_tier != "skip":
            if decision.cache_tier == "semantic" and embedding is None:
                embedding = self._embedding(request)
                self._embeddings.pop(request.request_id, None)
            if decision.cache_tier == "semantic" and embedding is None:
                return
            self.cache.insert(request.tenant, decision.category, decision.cache_tier, request.prompt, answer,
                              decision.model, now_s, context=cache_context(request), embedding=embedding)

    def _choose(self, category: str, features: np.ndarray, common: dict[str, Any], t0: float,
                rng: np.random.Generator, pref: Preference, heads: HeadPredictions | None = None) -> Decision:
        """``heads``: this request's precomputed heads for every catalogue model (``decide_batch``).
        The arithmetic after the ONNX call runs on Python floats with numpy's float32 rounding
        (``utilities_row``): the same numbers as the array version, without ~20 numpy calls."""
        info = self.scorer.info
        allowed, idx = self._candidates(category)
        h = heads if heads is not None else self.scorer.predict(features)
        q, c, l = h.quality.tolist(), h.cost_usd.tolist(), h.latency_ms.tolist()
        if idx is not None:
            q, c, l = [q[i] for i in idx], [c[i] for i in idx], [l[i] for i in idx]
        if not all(math.isfinite(x) for x in q):
            raise ValueError("policy returned non-finite quality")
        adjustment = self.online.adjustment(category, allowed).tolist()
        corrected = array("f", [x + a for x, a in zip(q, adjustment)]).tolist()
        util = utilities_row(corrected, c, l, pref, info.ref_cost_usd, info.ref_latency_ms)
        ch = choose(allowed, util, self.config.exploration, rng)
        return Decision(**common, model=ch.model, candidates=ch.candidates, action_probs=ch.action_probs,
                        propensity=ch.propensity, policy=self.config.exploration.kind, decision_ms=_ms(t0),
                        predicted_quality=dict(zip(allowed, q)))

    def _candidates(self, category: str) -> tuple[list[str], list[int] | None]:
        """The category's allowed catalogue models and their columns in the policy's heads (None when
        that is every column in order), computed once per category."""
        hit = self._candidate_cache.get(category)
        if hit is None:
            models = self.scorer.info.models
            allowed = [m for m in self.config.allowed_models(category) if m in models]
            idx = [models.index(m) for m in allowed]
            hit = self._candidate_cache[category] = (allowed, None if idx == list(range(len(models))) else idx)
        return hit

    def _fallback(self, common: dict[str, Any], t0: float) -> Decision:
        m = self.config.fallback_model
        return Decision(**common, model=m, candidates=(m,), action_probs=(1.0,), propensity=1.0,
                        policy="fallback", decision_ms=_ms(t0))


def cache_context(request: Request) -> str:
    """Everything but the last user turn (system prompt, earlier turns) and the generation parameters
    (``max_tokens``, ``temperature``, ``response_format``, ...): a cached answer is reused only under
    exactly the same context. JSON, so no message content can imitate a role boundary."""
    last = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=-1)
    earlier = [[m.role, m.content] for i, m in enumerate(request.messages) if i != last]
    if not earlier and not request.generation:
        return ""
    return json.dumps({"messages": earlier, "generation": request.generation}, ensure_ascii=False,
                      separators=(",", ":"))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
