"""training.cache_*: stream generation, the fast replay vs the real cache, the verifier's ONNX parity,
threshold fitting, and the `train cache` economics on simulated logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.cache import CachePolicy, CategoryCachePolicy, ResponseCache, TrigramEmbedder
from router.cache_verifier import HitVerifier, VerifierInfo
from training.cache_data import fit_stream, near_miss, paraphrase, read_stream, write_stream
from training.cache_replay import best_at, pair_examples, prepare, replay, sweep, threshold_rule, verifier_probs, verifier_rule
from training.cache_train import fit_verifier, onnx_scorer, observed_staleness

TAX = ("code", "math", "writing", "knowledge", "chat", "translation")
ENC = TrigramEmbedder()


@pytest.fixture(scope="module")
def stream() -> list[dict[str, object]]:
    return fit_stream(120, seed=3)


def test_near_misses_change_the_answer_and_paraphrases_do_not(stream: list[dict[str, object]]) -> None:
    rng = np.random.default_rng(0)
    assert near_miss("Summarise chapter 1 of the book", rng) not in (None, "Summarise chapter 1 of the book")
    assert near_miss("How do I enable 2FA?", np.random.default_rng(1)) is not None
    assert paraphrase("how do i sort a list in python", rng) != ""
    by_text: dict[str, set[object]] = {}
    for r in stream:
        by_text.setdefault(str(r["text"]), set()).add(r["answer_id"])
    assert len(stream) > 300 and {r["category"] for r in stream} == set(TAX)
    assert sum(len(v) > 1 for v in by_text.values()) <= len(by_text) * 0.02  # a text (almost) never has two answers


def test_fast_replay_matches_the_real_cache(stream: list[dict[str, object]]) -> None:
    blanks = [{"text": t, "category": TAX[0], "answer_id": f"blank{k}"} for k, t in enumerate(["", "   ", "\n", ""])]
    stream = stream[:50] + blanks[:2] + stream[50:100] + blanks[2:] + stream[100:]  # the real cache skips blanks
    ps = prepare(stream, ENC.encode)
    thresholds = {c: 0.8 for c in TAX}
    fast = replay(ps, threshold_rule(thresholds, ps))
    policy = CachePolicy(categories={c: CategoryCachePolicy(tier="semantic", threshold=0.8, ttl_s=1e9, max_entries=10**6)
                                     for c in TAX}, max_prompt_chars=10**9)
    cache = ResponseCache(policy)
    hits = false = 0
    for i, r in enumerate(stream):
        hit = cache.lookup("t", str(r["category"]), "semantic", str(r["text"]), float(i), embedding=ps.embeddings[i])
        if hit is None:
            cache.insert("t", str(r["category"]), "semantic", str(r["text"]), str(r["answer_id"]), "m", float(i),
                         embedding=ps.embeddings[i])
        else:
            hits += 1
            false += hit.answer != r["answer_id"]
    s = fast.summary()
    assert (s["hits"], s["false_hits"]) == (hits, false)
    assert hits > 0


def test_verifier_onnx_parity_and_fitting(stream: list[dict[str, object]]) -> None:
    ps = prepare(stream, ENC.encode)
    x, y = pair_examples(ps, TAX, floor=0.2)
    assert 0 < y.sum() < len(y)
    model, onnx_bytes = fit_verifier(x, y)
    native = model.predict_proba(x)[:, 1]
    onnx = onnx_scorer(onnx_bytes)(x)
    np.testing.assert_allclose(onnx, native, atol=1e-5)
    verifier = HitVerifier(onnx_bytes, VerifierInfo(taxonomy=TAX))
    probs = verifier.score("How do I enable 2FA?", ["How do I enable 2FA?", "How do I disable 2FA?"], [1.0, 0.9],
                           "knowledge")
    assert probs.shape == (2,)
    verifier_probs(ps, onnx_scorer(onnx_bytes), TAX, 0.3)
    curve = sweep(ps, lambda c: verifier_rule(c, ps, 0.3), [0.1, 0.5, 0.9])
    rates = [r.summary()["hit_rate"] for _, r in curve]
    assert rates[0] >= rates[1] >= rates[2]
    t_curve = sweep(ps, lambda t: threshold_rule(t, ps), [0.6, 0.8, 0.99])
    best = best_at(t_curve, 1.0)
    assert best is not None and best[0] == 0.6


def test_a_broken_verifier_rejects_instead_of_raising() -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["probabilities"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    verifier = HitVerifier(model.SerializeToString(), VerifierInfo(taxonomy=TAX))  # wrong input width
    assert verifier.score("a", ["a"], [1.0], "code").tolist() == [0.0]
    assert verifier.n_errors == 1
    onnx.checker.check_model(model)


def test_read_stream_names_bad_lines(tmp_path: Path) -> None:
    ok = write_stream([{"text": "hi", "category": "chat", "answer_id": 1}], tmp_path / "s.jsonl")
    assert read_stream(ok)[0]["answer_id"] == "1"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "hi", "category": "chat"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1: missing field 'answer_id'"):
        read_stream(bad)
    bad.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        read_stream(bad)
    lone = tmp_path / "lone.jsonl"  # an escaped lone surrogate: valid JSON, replaced by U+FFFD
    lone.write_text('{"text": "caf\\ud800", "category": "chat", "answer_id": "a"}\n', encoding="utf-8")
    assert read_stream(lone)[0]["text"] == "caf\ufffd"
    sep = tmp_path / "sep.jsonl"  # U+2028 inside a string is valid JSON; only \n ends a JSONL line
    sep.write_text(json.dumps({"text": "a\u2028b", "category": "chat", "answer_id": "a"}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    assert read_stream(sep)[0]["text"] == "a\u2028b"
    bad.write_text(json.dumps({"text": "hi", "category": "chat", "answer_id": "a", "timestamp_s": None}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: 'timestamp_s' must be a finite number"):
        read_stream(bad)


def test_observed_staleness_measures_answer_lifetimes() -> None:
    rows = [{"text": "price of gold", "category": "knowledge", "answer_id": a, "timestamp_s": t}
            for a, t in (("x", 0.0), ("x", 50.0), ("y", 120.0), ("z", 300.0))]
    assert observed_staleness(rows)["knowledge"] == [120.0, 180.0]


def test_category_economics_on_simulated_logs(sim_logs: Path, world, stream: list[dict[str, object]]) -> None:  # type: ignore[no-untyped-def]
    from router.log_schema import read_logs
    from training.cache_train import Matchers, category_economics

    ps = prepare(stream, ENC.encode)
    x, y = pair_examples(ps, TAX, floor=0.2)
    _, onnx_bytes = fit_verifier(x, y)
    matchers = Matchers({c: 0.9 for c in TAX}, 0.9, {c: 0.5 for c in TAX}, 0.5, onnx_bytes,
                        VerifierInfo(taxonomy=TAX, candidate_floor=0.5), {})
    cfg = world.router
    policies, report = category_economics(read_logs(sim_logs), cfg, matchers, ENC, staleness={}, max_rows=300)
    assert set(policies) == set(cfg.taxonomy)
    assert policies["writing"].tier == "skip" and "opts out" in report["writing"]["reason"]
    chat = report["chat"]
    assert chat["exact"]["hit_rate"] > 0.05  # the simulated world repeats 30% of chat prompts
    for cat, p in policies.items():
        r = report[cat]
        assert cfg.cache.min_ttl_s <= p.ttl_s <= cfg.cache.max_ttl_s
        assert 100 <= p.max_entries <= 100_000
        if p.tier == "semantic":
            assert r["semantic"]["hit_rate"] > r["break_even_semantic"]
        if p.tier == "exact":
            assert r["exact"]["hit_rate"] > r["break_even_exact"]


def test_a_trained_cache_policy_goes_into_a_bundle_and_serves(bundle, stream: list[dict[str, object]],  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:
    from router.decision import Router
    from router.request import Message, Request
    from training.bundle_builder import with_cache_policy

    ps = prepare(stream, ENC.encode)
    x, y = pair_examples(ps, TAX, floor=0.2)
    _, onnx_bytes = fit_verifier(x, y)
    info = VerifierInfo(taxonomy=TAX, candidate_floor=0.3)
    policy = CachePolicy(categories={c: CategoryCachePolicy(tier="semantic", threshold=0.9, verifier_cutoff=0.5)
                                     for c in TAX}, verifier=info)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cache_policy.json").write_text(policy.model_dump_json(), encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="cache_verifier.onnx"):
        with_cache_policy(bundle, tmp_path / "cache", tmp_path / "b2")
    (tmp_path / "cache" / info.file).write_bytes(onnx_bytes)
    b2 = with_cache_policy(bundle, tmp_path / "cache", tmp_path / "b2")
    router = Router(b2)
    assert router.cache.verifier is not None and router.cache.policy.verifier == info
    req = Request((Message("user", "how do I reverse a list in python"),))
    first = router.decide(req, now_s=0.0, rng=np.random.default_rng(0))
    router.remember(req, first, "xs[::-1]", 0.0)
    again = router.decide(Request((Message("user", "How do I reverse a list in Python?"),)), now_s=1.0,
                          rng=np.random.default_rng(0))
    assert again.cache_hit is not None and again.cache_hit.answer == "xs[::-1]"


def test_the_verifier_only_rises_with_cosine_and_falls_on_a_disagreement(stream: list[dict[str, object]]) -> None:
    from router.cache_features import PAIR_FEATURES

    ps = prepare(stream, ENC.encode)
    x, y = pair_examples(ps, TAX, floor=0.2)
    _, onnx_bytes = fit_verifier(x, y)
    score = onnx_scorer(onnx_bytes)
    rows = np.repeat(x[:40], 21, axis=0)
    cos = PAIR_FEATURES.index("cosine")
    rows[:, cos] = np.tile(np.linspace(0.0, 1.0, 21, dtype=np.float32), 40)
    p = score(rows).reshape(40, 21)
    assert (np.diff(p, axis=1) >= -1e-6).all()  # never lower for a higher cosine
    for name in ("negation_mismatch", "opposite_flip", "number_mismatch"):
        j = PAIR_FEATURES.index(name)
        off, on = x[:200].copy(), x[:200].copy()
        off[:, j], on[:, j] = 0.0, 1.0
        assert (score(on) <= score(off) + 1e-6).all(), name


def test_natural_paraphrases_keep_numbers_negations_and_content() -> None:
    from router.cache_features import NEGATIONS, numbers
    from training.cache_data import drop_word, reframe

    rng = np.random.default_rng(0)
    assert reframe("How do I reset my password?", rng).lower().endswith(("reset my password", "reset my password?"))
    assert reframe("What is the capital of France?", rng) == "What is the capital of France?"  # a question: left alone
    for text in ("Please do not cancel the 3 orders", "how do I turn the heating up to 21 degrees",
                 "can you just tell me the balance of my savings account"):
        for _ in range(20):
            out = drop_word(reframe(text, rng), rng)
            assert numbers(out) == numbers(text)
            assert {w for w in out.lower().split() if w in NEGATIONS} == {w for w in text.lower().split() if w in NEGATIONS}


def test_fitting_streams_add_real_prompts_under_an_unknown_category(shared_data: Path) -> None:
    from training.cache_data import OTHER, _routerbench_bases, _sharegpt_bases

    rb, sg = _routerbench_bases(shared_data), _sharegpt_bases(shared_data, limit=50)
    assert {c for _, c in rb} == {"code", "knowledge"} and len(rb) > 500
    assert not any("A)" in t or "\n" in t for t, _ in rb[:50])
    assert len(sg) == 50 and {c for _, c in sg} == {OTHER}


def test_matched_comparison_uses_the_verifiers_realised_false_hit_rate() -> None:
    from training.cache_eval import matched_comparison
    from training.cache_replay import ReplayResult

    curve = [(0.6, ReplayResult({"c": 100}, {"c": 60}, {"c": 6})),  # FHR 10%
             (0.7, ReplayResult({"c": 100}, {"c": 40}, {"c": 1})),  # FHR 2.5%
             (0.8, ReplayResult({"c": 100}, {"c": 20}, {"c": 0}))]  # FHR 0
    verifier = {"hit_rate": 0.5, "false_hit_rate": 0.02}
    out = matched_comparison(verifier, {"hit_rate": 0.0, "false_hit_rate": 0.0}, curve, 0.05)
    assert out["oracle_global_at_verifier_fhr"]["threshold"] == 0.8  # 0.7 has a higher FHR than the verifier
    assert out["hit_rate_ratio_verifier_vs_oracle_global"] == pytest.approx(2.5)
    assert out["hit_rate_ratio_verifier_vs_fitted_global"] is None and out["verifier_false_hit_rate_ok"]
