"""router.decision.Router on the session bundle: categories, propensities, fallback, routes, cache,
and the scoring-failure path (fakes replace the ONNX-backed parts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router.bundle import Bundle
from router.config import Preference, RouterConfig
from router.policy import HeadPredictions
from router.decision import Decision, Router
from router.features import feature_names
from router.request import Message, Request

CLEAR_PROMPTS = {
    "code": ["Write a Python function that reverses a linked list", "how do i comment out multiple lines in java"],
    "math": ["Find the limit as x -> 0 of sin(3x)/x. Explain step by step.", "whats 17 squared"],
    "writing": ["Can you write an essay on the future of public libraries? Make sure to end with a clear call to "
                "action.", "Write a short poem about autumn leaves"],
    "knowledge": ["What causes inflation, and how is it usually treated?"],
    "chat": ["hey i cant sleep, its 1am. any tips?", "hey friend, how is your day going so far?"],
    "translation": ["Translate 'good morning, my friend' into German", "how do you say good morning in Italian"],
}


def _req(text: str, tenant: str = "default") -> Request:
    return Request(messages=(Message("user", text),), tenant=tenant)


def _with(router_cfg: RouterConfig, **update: object) -> RouterConfig:
    return router_cfg.model_copy(update=update)


def _epsilon(cfg: RouterConfig, eps: float) -> RouterConfig:
    return _with(cfg, exploration=cfg.exploration.model_copy(update={"epsilon": eps}))


def _assert_consistent(d: Decision, cfg: RouterConfig) -> None:
    assert d.model in d.candidates
    assert len(d.action_probs) == len(d.candidates)
    assert sum(d.action_probs) == pytest.approx(1.0)
    assert d.propensity == d.action_probs[d.candidates.index(d.model)]
    assert 0.0 < d.propensity <= 1.0
    assert len(d.category_probs) == len(cfg.taxonomy)
    assert sum(d.category_probs) == pytest.approx(1.0, abs=1e-4)
    assert d.confidence == max(d.category_probs)
    assert d.category == cfg.taxonomy[int(np.argmax(d.category_probs))]
    assert len(d.features) == len(feature_names(cfg.taxonomy))
    assert d.decision_ms >= 0.0


@pytest.fixture
def router(bundle: Bundle) -> Router:
    return Router(bundle)


@pytest.mark.parametrize(("category", "prompt"), [(c, p) for c, ps in CLEAR_PROMPTS.items() for p in ps])
def test_obvious_prompts_get_their_category(router: Router, category: str, prompt: str) -> None:
    d = router.decide(_req(prompt), now_s=0.0, rng=np.random.default_rng(0))
    assert d.category == category, (d.category, d.confidence)
    assert not d.fallback and d.policy == "epsilon_greedy"
    assert d.cache_tier == router.cache.policy.for_category(category).tier
    assert d.cache_hit is None
    assert d.bundle_version == "test-1"
    assert set(d.candidates) == set(router.config.allowed_models(category))
    assert set(d.predicted_quality) == set(d.candidates)
    _assert_consistent(d, router.config)


def test_propensities_match_epsilon_greedy(router: Router) -> None:
    eps, rng = router.config.exploration.epsilon, np.random.default_rng(5)
    for prompt in [p for ps in CLEAR_PROMPTS.values() for p in ps]:
        d = router.decide(_req(prompt), now_s=0.0, rng=rng)
        k = len(d.candidates)
        assert sorted(d.action_probs) == pytest.approx(sorted([eps / k] * (k - 1) + [1 - eps + eps / k]))
        _assert_consistent(d, router.config)


def test_min_confidence_one_forces_the_fallback(bundle: Bundle) -> None:
    router = Router(bundle, config=_with(bundle.manifest.router, min_confidence=1.0))
    for prompt in ["hey i cant sleep, its 1am. any tips?", "What causes inflation, and how is it usually treated?"]:
        d = router.decide(_req(prompt), now_s=0.0, rng=np.random.default_rng(0))
        assert d.fallback and d.confidence < 1.0
        assert (d.model, d.candidates, d.action_probs, d.propensity, d.policy) == (
            "large", ("large",), (1.0,), 1.0, "fallback")
        assert d.cache_tier == "skip"  # fallbacks never read the cache
    assert router.n_fallbacks == 0  # low confidence is not a scoring failure


def test_routes_restricting_chat_never_choose_large(bundle: Bundle) -> None:
    cfg = bundle.manifest.router
    assert cfg.allowed_models("chat") == ("small", "medium")
    router = Router(bundle, config=_epsilon(cfg, 1.0))  # uniform exploration tries every candidate
    rng = np.random.default_rng(7)
    chosen = set()
    for i in range(300):
        d = router.decide(_req(CLEAR_PROMPTS["chat"][i % 2]), now_s=0.0, rng=rng)
        assert d.category == "chat" and d.candidates == ("small", "medium")
        chosen.add(d.model)
    assert chosen == {"small", "medium"}


def test_a_route_restricted_to_one_model(bundle: Bundle) -> None:
    cfg = bundle.manifest.router
    routes = dict(cfg.routes)
    routes["code"] = routes["code"].model_copy(update={"models": ("medium",)})
    router = Router(bundle, config=_with(cfg, routes=routes))
    d = router.decide(_req(CLEAR_PROMPTS["code"][0]), now_s=0.0, rng=np.random.default_rng(0))
    assert (d.model, d.candidates, d.propensity) == ("medium", ("medium",), 1.0)


def test_preference_is_a_run_time_knob(bundle: Bundle) -> None:
    router = Router(bundle, config=_epsilon(bundle.manifest.router, 0.0))
    req = _req(CLEAR_PROMPTS["math"][0])
    cheap = router.decide(req, now_s=0.0, rng=np.random.default_rng(0), preference=Preference(cost=1000.0))
    assert cheap.model == "small" and cheap.propensity == 1.0
    best = router.decide(req, now_s=0.0, rng=np.random.default_rng(0), preference=Preference(cost=0.0))
    assert best.model == max(best.predicted_quality, key=best.predicted_quality.__getitem__)


# --- cache --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("category", ["code", "knowledge", "chat"])
def test_cache_round_trip(router: Router, category: str) -> None:
    req = _req(CLEAR_PROMPTS[category][0])
    first = router.decide(req, now_s=100.0, rng=np.random.default_rng(0))
    assert first.cache_tier in ("exact", "semantic") and first.cache_hit is None
    router.remember(req, first, "the answer", now_s=100.0)
    again = router.decide(_req(CLEAR_PROMPTS[category][0]), now_s=101.0, rng=np.random.default_rng(1))
    assert again.cache_hit is not None and again.cache_hit.answer == "the answer"
    assert (again.policy, again.model, again.candidates, again.action_probs, again.propensity) == (
        "cache", first.model, (first.model,), (1.0,), 1.0)
    other_tenant = router.decide(_req(CLEAR_PROMPTS[category][0], tenant="other"), now_s=101.0,
                                 rng=np.random.default_rng(1))
    assert other_tenant.cache_hit is None


def test_skip_tier_is_never_cached(router: Router) -> None:
    req = _req(CLEAR_PROMPTS["writing"][0])
    first = router.decide(req, now_s=0.0, rng=np.random.default_rng(0))
    assert first.cache_tier == "skip"
    router.remember(req, first, "a poem", now_s=0.0)
    assert len(router.cache) == 0
    assert router.decide(req, now_s=1.0, rng=np.random.default_rng(0)).cache_hit is None


def test_remember_ignores_a_cache_hit(router: Router) -> None:
    req = _req(CLEAR_PROMPTS["code"][0])
    first = router.decide(req, now_s=0.0, rng=np.random.default_rng(0))
    router.remember(req, first, "answer", now_s=0.0)
    hit = router.decide(req, now_s=1.0, rng=np.random.default_rng(0))
    router.remember(req, hit, "answer", now_s=1.0)  # must not re-insert (that would extend the TTL)
    ttl = router.cache.policy.for_category("code").ttl_s
    assert router.decide(req, now_s=ttl + 0.5, rng=np.random.default_rng(0)).cache_hit is None


# --- failures ------------------------------------------------------------------------------------------


class RaisingScorer:
    def __init__(self, info) -> None:  # type: ignore[no-untyped-def]
        self.info = info

    def predict(self, features: np.ndarray) -> HeadPredictions:
        raise RuntimeError("onnxruntime exploded")


class NanScorer(RaisingScorer):
    def predict(self, features: np.ndarray) -> HeadPredictions:
        nan = np.full(3, np.nan, dtype=np.float32)
        return HeadPredictions(nan, np.ones(3, dtype=np.float32), np.ones(3, dtype=np.float32))


class NanClassifier:
    def __init__(self, n: int) -> None:
        self.n = n

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.full((len(texts), self.n), np.nan, dtype=np.float32)


class RaisingClassifier:
    def predict_proba(self, texts: list[str]) -> np.ndarray:
        raise RuntimeError("classifier.onnx exploded")


def test_scoring_failure_falls_back(router: Router, caplog: pytest.LogCaptureFixture) -> None:
    router.scorer = RaisingScorer(router.scorer.info)  # type: ignore[assignment]
    with caplog.at_level("WARNING", logger="turnout.router"):
        for i, prompt in enumerate([CLEAR_PROMPTS["code"][0], CLEAR_PROMPTS["chat"][0]], start=1):
            d = router.decide(_req(prompt), now_s=0.0, rng=np.random.default_rng(0))
            assert (d.model, d.candidates, d.propensity, d.policy) == ("large", ("large",), 1.0, "fallback")
            assert router.n_fallbacks == i
            assert d.category in ("code", "chat")  # the classification is still reported
    # never silent, never a line per request: the first failure is logged, the second only counted
    lines = [r.getMessage() for r in caplog.records if "policy scoring" in r.getMessage()]
    assert len(lines) == 1 and "(1 so far)" in lines[0]


def test_nan_quality_is_a_scoring_failure(router: Router) -> None:
    router.scorer = NanScorer(router.scorer.info)  # type: ignore[assignment]
    d = router.decide(_req(CLEAR_PROMPTS["code"][0]), now_s=0.0, rng=np.random.default_rng(0))
    assert (d.model, d.policy, router.n_fallbacks) == ("large", "fallback", 1)


def test_nan_confidence_takes_the_fallback(router: Router) -> None:
    router.classifier = NanClassifier(len(router.config.taxonomy))  # type: ignore[assignment]
    d = router.decide(_req(CLEAR_PROMPTS["code"][0]), now_s=0.0, rng=np.random.default_rng(0))
    assert (d.model, d.policy, d.fallback) == ("large", "fallback", True)


def test_classifier_failure_falls_back(router: Router) -> None:
    router.classifier = RaisingClassifier()  # type: ignore[assignment]
    d = router.decide(_req(CLEAR_PROMPTS["code"][0]), now_s=0.0, rng=np.random.default_rng(0))
    assert (d.model, d.policy, d.propensity) == ("large", "fallback", 1.0)
    assert router.n_fallbacks == 1


class NanRowClassifier:
    """Answers without raising, but with non-finite probabilities (a corrupted head)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def predict_row(self, text: str) -> tuple[list[float], bool]:
        return [math.nan] * self.n, False


def test_non_finite_classifier_output_falls_back_and_is_logged(router: Router, caplog: pytest.LogCaptureFixture) -> None:
    router.classifier = NanRowClassifier(len(router.config.taxonomy))  # type: ignore[assignment]
    with caplog.at_level("WARNING", logger="turnout.router"):
        d = router.decide(_req(CLEAR_PROMPTS["code"][0]), now_s=0.0, rng=np.random.default_rng(0))
    assert (d.model, d.policy, router.n_fallbacks) == ("large", "fallback", 1)
    assert any("non-finite probabilities" in r.getMessage() for r in caplog.records)
