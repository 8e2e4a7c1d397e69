"""Policy trainers: ONNX parity for every variant, variant selection, the run-time preference knob,
the bounded online correction, and ``eval router``'s report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.config import Preference
from router.decision import Router
from router.onnx_session import make_session
from router.online import OnlineCorrection
from router.policy import OnlineBounds, PolicyScorer
from router.request import Message, Request, parse_preference
from router.errors import RequestError
from training.policy import GBDTPolicyTrainer, LinUCBTrainer, LoggedBandit, fit_policy

MODELS = ("cheap", "mid", "best")


def synthetic_logs(n: int, seed: int, d: int = 8) -> LoggedBandit:
    """Quality depends on context; the best model is the costliest; uniform logging."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    a = rng.integers(0, 3, n)
    skill = np.array([0.4, 0.6, 0.8])
    q = np.clip(skill[a] + 0.15 * x[:, 0] * (a == 0) + rng.normal(0, 0.05, n), 0, 1)
    cost = np.array([1e-4, 1e-3, 1e-2])[a] * rng.lognormal(0, 0.3, n)
    lat = np.array([200.0, 500.0, 1500.0])[a] * rng.lognormal(0, 0.2, n)
    return LoggedBandit(x, a, np.full(n, 1 / 3), q, cost, lat, MODELS)


@pytest.fixture(scope="module")
def logs() -> LoggedBandit:
    return synthetic_logs(1500, 0)


@pytest.mark.parametrize("trainer", [GBDTPolicyTrainer(MODELS, weighting="dm"), GBDTPolicyTrainer(MODELS, weighting="ips"),
                                     LinUCBTrainer(MODELS, alpha=0.2)], ids=lambda t: t.name)
def test_onnx_heads_match_native(trainer, logs: LoggedBandit) -> None:  # type: ignore[no-untyped-def]
    trainer.fit(logs)
    ref_c, ref_l = logs.reference_scales()
    scorer = PolicyScorer(make_session(trainer.to_onnx()), trainer.info(ref_c, ref_l, OnlineBounds()))
    x = synthetic_logs(200, 1).features
    native, exported = trainer.predict(x), scorer.predict_batch(x)
    np.testing.assert_allclose(exported.quality, native.quality, atol=1e-5)
    np.testing.assert_allclose(exported.cost_usd, native.cost_usd, rtol=1e-5)
    np.testing.assert_allclose(exported.latency_ms, native.latency_ms, rtol=1e-5)
    single = scorer.predict(x[0])
    np.testing.assert_allclose(single.quality, native.quality[0], atol=1e-5)


def test_heads_learn_quality_cost_and_latency(logs: LoggedBandit) -> None:
    t = GBDTPolicyTrainer(MODELS).fit(logs)
    p = t.predict(np.zeros((1, 8), dtype=np.float32))
    assert list(np.argsort(p.quality[0])) == [0, 1, 2]
    assert list(np.argsort(p.cost_usd[0])) == [0, 1, 2] and list(np.argsort(p.latency_ms[0])) == [0, 1, 2]
    assert p.cost_usd[0, 2] == pytest.approx(1e-2, rel=0.3)


def test_fit_policy_reports_every_variant_and_keeps_the_best(logs: LoggedBandit) -> None:
    fitted = fit_policy(logs, Preference(quality=1.0, cost=0.1), seed=0)
    scores = fitted.metrics["variants_dr_value"]
    assert set(scores) == {"gbdt-dm", "gbdt-ips", "linucb"}
    assert fitted.metrics["chosen"] == max(scores, key=scores.__getitem__)
    assert set(fitted.files) == {"policy.onnx"} and fitted.info.models == MODELS


def test_heavy_tailed_costs_are_winsorised() -> None:
    logs = synthetic_logs(600, 2)
    spiky = LoggedBandit(logs.features, logs.action, logs.propensity, logs.quality,
                         np.where(np.arange(600) == 5, 1e6, logs.cost), logs.latency, MODELS)
    assert spiky.targets()["cost"].max() < np.log(1.0)  # the $1M outlier is clipped to the p99


def test_preference_knob_changes_decisions_without_retraining(bundle) -> None:  # type: ignore[no-untyped-def]
    router = Router(bundle, config=bundle.manifest.router.model_copy(
        update={"exploration": bundle.manifest.router.exploration.model_copy(update={"epsilon": 0.0})}))
    prompts = ["Prove that the square root of 2 is irrational, step by step.",
               "write a python function that parses a CSV file and computes column means",
               "Explain the causes of the French Revolution in detail."]
    picks = {}
    for w in (0.0, 50.0):
        picks[w] = [router.decide(Request(messages=(Message("user", p),)), now_s=0.0, rng=np.random.default_rng(0),
                                  preference=Preference(quality=1.0, cost=w)).model for p in prompts]
    assert picks[0.0] != picks[50.0]
    assert set(picks[50.0]) == {"small"}


def test_preference_header_parses_and_rejects() -> None:
    assert parse_preference("quality=1, cost=0.3,latency=0.1") == Preference(quality=1.0, cost=0.3, latency=0.1)
    assert parse_preference("cost=2") == Preference(cost=2.0)
    for bad, message in [("speed=1", "keys quality, cost, latency"), ("cost=abc", "must be a number"),
                         ("cost=-1", ">= 0"), ("cost", "key=value"), ("cost=nan", ">= 0")]:
        with pytest.raises(RequestError, match=message):
            parse_preference(bad)


def test_online_correction_is_bounded_discounted_and_per_cell() -> None:
    oc = OnlineCorrection(OnlineBounds(max_adjust=0.1, discount=0.9, prior_weight=5.0))
    assert oc.adjustment("code", ["a", "b"]).tolist() == [0.0, 0.0]
    for _ in range(200):
        oc.observe("code", "a", predicted=0.5, observed=1.0)  # the offline model underrates a by 0.5
    assert oc.adjustment("code", ["a", "b"]).tolist() == pytest.approx([0.1, 0.0])  # clipped at the bound
    assert oc.adjustment("math", ["a"]).tolist() == [0.0]
    for _ in range(200):
        oc.observe("code", "a", predicted=0.5, observed=0.45)  # drift: old evidence decays
    assert oc.adjustment("code", ["a"])[0] == pytest.approx(-0.05 * 10 / 15, abs=0.01)
    oc.observe("code", "a", predicted=float("nan"), observed=1.0)  # ignored, no crash


def test_router_observe_shifts_choices_within_bounds(bundle) -> None:  # type: ignore[no-untyped-def]
    cfg = bundle.manifest.router
    router = Router(bundle, config=cfg.model_copy(update={"exploration": cfg.exploration.model_copy(update={"epsilon": 0.0})}))
    req = Request(messages=(Message("user", "hey, how is your day going?"),))
    d = router.decide(req, now_s=0.0, rng=np.random.default_rng(0))
    assert d.policy == "epsilon_greedy" and d.category == "chat"
    for _ in range(300):
        router.observe(d, quality=0.0)  # the chosen model keeps failing here
    d2 = router.decide(req, now_s=0.0, rng=np.random.default_rng(0))
    bound = bundle.manifest.policy.online.max_adjust
    assert router.online.adjustment("chat", [d.model])[0] == pytest.approx(-bound)
    gap = d.predicted_quality[d.model] - max(v for m, v in d.predicted_quality.items() if m != d.model)
    assert (d2.model != d.model) == (gap < bound)


def test_eval_router_report(tmp_path: Path) -> None:
    from training.router_eval import eval_router

    rng = np.random.default_rng(0)
    rows = []
    for i in range(400):
        cat = ["code", "knowledge"][i % 2]
        hard = rng.random() < 0.5
        qs = {"cheap": float(not hard and cat == "knowledge"), "mid": float(not hard), "best": float(rng.random() < 0.9)}
        costs = {"cheap": 1e-4, "mid": 1e-3, "best": 1e-2}
        text = f"{'hard' if hard else 'easy'} {cat} question number {i} " + ("def f(x): return x" if cat == "code" else "why?")
        rows.append({"prompt": text, "category": cat,
                     "outcomes": {m: {"quality": qs[m], "cost": costs[m]} for m in qs}})
    for name, part in (("train", rows[:300]), ("test", rows[300:])):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in part) + "\n")
    report = eval_router(tmp_path / "train.jsonl", tmp_path / "test.jsonl", seed=0, n_bootstrap=30)
    assert {"curve", "single_models", "oracle", "full_information", "ope"} <= set(report)
    assert all(set(p) == {"preference", "quality", "cost"} for p in report["curve"])
    assert set(report["single_models"]) == {"cheap", "mid", "best"}
    for name in ("ips", "snips", "dm", "dr"):
        assert set(report["ope"][name]) == {"estimate", "ci_low", "ci_high"}
    assert 0.0 <= report["ope"]["true"] <= 1.0
    # the learned policy beats the cheapest model's quality and undercuts the best model's cost somewhere
    best = report["single_models"]["best"]
    assert any(p["quality"] >= best["quality"] - 0.05 and p["cost"] < 0.8 * best["cost"] for p in report["curve"])
