"""The router's speed-ups change no decision: each fast path equals the plain computation it replaced.

(No wall-clock assertions: ``benchmarks/router_latency.py`` measures the speed.)
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest

from router.bundle import Bundle
from router.config import Exploration, Preference
from router.decision import Decision, Router
from router.features import SKETCH_DIM, SKETCH_TOKENS, _TOKEN, text_sketch
from router.policy import draw
from router.request import Message, Request


@pytest.mark.parametrize("seed", range(40))
def test_draw_takes_the_same_index_and_draw_as_rng_choice(seed: int) -> None:
    g = np.random.default_rng(seed)
    k = int(g.integers(1, 7))
    p = g.dirichlet(np.full(k, 0.3)) if seed % 2 else np.full(k, 0.1 / k) + 0.9 * (np.arange(k) == g.integers(k))
    a, b = np.random.default_rng(seed + 100), np.random.default_rng(seed + 100)
    assert [int(a.choice(k, p=p)) for _ in range(200)] == [draw(b, p.tolist(), p) for _ in range(200)]
    assert a.bit_generator.state == b.bit_generator.state


@pytest.mark.parametrize("p", [[0.5, float("nan")], [1.2, -0.2], [0.3, 0.3]])
def test_draw_rejects_what_rng_choice_rejects(p: list[float]) -> None:
    with pytest.raises(ValueError) as expected:
        np.random.default_rng(0).choice(len(p), p=p)
    with pytest.raises(ValueError, match=str(expected.value)):
        draw(np.random.default_rng(0), p)


def _sketch_reference(text: str) -> np.ndarray:
    """The sketch as first written: accumulate in the float32 array itself."""
    half = SKETCH_TOKENS // 2
    head = _TOKEN.findall(text[: 16 * half].lower())[:half]
    tail = _TOKEN.findall(text[-16 * half:].lower())[-half:] if len(text) > 16 * half else []
    tokens = head + tail
    vec = np.zeros(SKETCH_DIM, dtype=np.float32)
    for g in tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]:
        h = zlib.crc32(g.encode("utf-8", "replace"))
        vec[h % SKETCH_DIM] += 1.0 if (h >> 16) & 1 else -1.0
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm else vec


@pytest.mark.parametrize("text", ["", "a", "How do I reverse a list in Python?", "word " * 5000, "x" * 40_000,
                                  "héllo wörld 你好 \ud800 " * 300, "the the the the"])
def test_sketch_is_bit_identical_to_the_reference(text: str) -> None:
    assert text_sketch(text).tobytes() == _sketch_reference(text).tobytes()


# ------------------------------------------------------------------------------------------------
# batched decisions

PROMPTS = ["How do I reverse a linked list in C?", "Solve 3x + 5 = 20 for x.", "Write a haiku about autumn rain.",
           "What is the capital of Australia?", "hi, how are you today?", "Translate 'good morning' into French.",
           "Explain quicksort and its worst case.", "Integrate x^2 from 0 to 3.", "Wie spät ist es bitte?",
           "", "zzkq xxvv qqpw bvvx", "aGVsbG8gd29ybGQgYmFzZTY0" * 4, "😀" * 20, "x" * 40_000]


def _requests(prefix: str) -> list[Request]:
    out = []
    for i in range(3 * len(PROMPTS)):
        pref = Preference(quality=1.0, cost=float(i % 3), latency=0.2) if i % 4 == 0 else None
        text = PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" (variant {i // len(PROMPTS)})")
        out.append(Request(messages=(Message("user", text),), request_id=f"{prefix}{i}", tenant=f"t{i % 2}",
                           preference=pref))
    return out


def _warm(router: Router) -> None:
    """The same cache state in every router: a third of the prompts answered once."""
    g = np.random.default_rng(1)
    for q in _requests("warm")[::3]:
        d = router.decide(q, now_s=1.0, rng=g)
        router.remember(q, d, f"answer to {q.prompt[:20]}", now_s=1.0)


def _same(a: Decision, b: Decision) -> bool:
    x, y = dataclasses.asdict(a), dataclasses.asdict(b)
    x.pop("decision_ms")
    y.pop("decision_ms")
    return x == y


@pytest.mark.parametrize("model_load", [None, {"small": 0.2, "medium": 0.5, "large": 0.9},
                                        {"small": 4.0, "medium": 9.0, "large": 6.0}])
def test_decide_batch_equals_decide_one_by_one(bundle: Bundle, model_load: dict[str, float] | None) -> None:
    seq_router, batch_router = Router(bundle), Router(bundle)
    _warm(seq_router)
    _warm(batch_router)
    reqs = _requests("q")
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    seq = [seq_router.decide(r, now_s=2.0, rng=g1, model_load=model_load) for r in reqs]
    batched: list[Decision] = []
    for size in (1, 5, 17, len(reqs)):  # batch boundaries anywhere
        start = len(batched)
        batched += batch_router.decide_batch(reqs[start:start + size], now_s=2.0, rng=g2, model_load=model_load)
    batched += batch_router.decide_batch(reqs[len(batched):], now_s=2.0, rng=g2, model_load=model_load)
    assert len(batched) == len(seq)
    assert [i for i, (a, b) in enumerate(zip(seq, batched)) if not _same(a, b)] == []
    assert g1.bit_generator.state == g2.bit_generator.state
    policies = {d.policy for d in seq}
    assert {"cache", "fallback", "epsilon_greedy"} <= policies, policies  # every path was exercised
    assert seq_router.n_fallbacks == batch_router.n_fallbacks


def test_decide_batch_falls_back_like_decide_when_models_fail(bundle: Bundle) -> None:
    reqs = _requests("f")[:6]
    for broken in ("classifier", "scorer"):
        routers = [Router(bundle), Router(bundle)]
        for r in routers:
            def boom(*args: object, **kwargs: object) -> None:
                raise RuntimeError("onnxruntime exploded")

            if broken == "classifier":
                r.classifier.predict = boom  # type: ignore[method-assign]
                r.classifier.predict_row = boom  # type: ignore[method-assign]
            else:
                r.scorer.predict = boom  # type: ignore[method-assign]
                r.scorer.predict_batch = boom  # type: ignore[method-assign]
        g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
        seq = [routers[0].decide(q, now_s=0.0, rng=g1) for q in reqs]
        bat = routers[1].decide_batch(reqs, now_s=0.0, rng=g2)
        assert all(_same(a, b) for a, b in zip(seq, bat)) and {d.policy for d in bat} <= {"fallback", "cache"}
        assert routers[0].n_fallbacks == routers[1].n_fallbacks > 0


def test_policy_batch_rows_equal_single_rows(bundle: Bundle) -> None:
    router = Router(bundle)
    assert router.scorer.row_separable == (bundle.manifest.policy.kind == "gbdt")
    x = np.random.default_rng(0).normal(size=(33, bundle.manifest.policy.n_context)).astype(np.float32)
    batch = router.scorer.predict_batch(x)
    for i in range(len(x)):
        one = router.scorer.predict(x[i])
        if router.scorer.row_separable:
            assert one.quality.tobytes() == batch.quality[i].tobytes()
            assert one.cost_usd.tobytes() == batch.cost_usd[i].tobytes()
            assert one.latency_ms.tobytes() == batch.latency_ms[i].tobytes()
        else:
            np.testing.assert_allclose(one.quality, batch.quality[i], rtol=1e-5)


def test_exploration_kinds_draw_like_rng_choice() -> None:
    from router.policy import action_probs, choose

    for exploration in (Exploration(kind="epsilon_greedy", epsilon=0.2), Exploration(kind="softmax", temperature=0.1)):
        u = np.array([0.3, 0.31, 0.1, 0.3], dtype=np.float32)
        p = action_probs(u, exploration)
        a, b = np.random.default_rng(9), np.random.default_rng(9)
        picks = [choose(list("abcd"), u, exploration, a).model for _ in range(300)]
        assert picks == ["abcd"[int(b.choice(4, p=p))] for _ in range(300)]


# ------------------------------------------------------------------------------------------------
# fast paths of the classifier, OOD guard, features and choice (issue 7 throughput): each equals the
# plain computation bit for bit

_TEXTS = PROMPTS + ["héllo wörld 你好 \ud800 " * 30, "a  b \t\t c", "```py\nx = [1, 2]\n```? √π∑ ABC", "x" * 700,
                    " ".join(PROMPTS) * 3, "Écrivez un poème sur la mer, s'il vous plaît."]


def _nll_loop(lm: object, text: str) -> float:
    """CharLanguageModel.mean_nll as first written: one dict lookup chain per character."""
    from router.ood import _BACKOFF, lm_view

    t = lm_view(text, lm.max_chars)  # type: ignore[attr-defined]
    if not t:
        return -lm.floor  # type: ignore[attr-defined]
    padded, total = "  " + t, 0.0
    for i in range(2, len(padded)):
        lp = lm.trigram.get(padded[i - 2:i + 1])  # type: ignore[attr-defined]
        if lp is None:
            lp = lm.bigram.get(padded[i - 1:i + 1])  # type: ignore[attr-defined]
            if lp is not None:
                lp += _BACKOFF
            else:
                lp = lm.unigram.get(padded[i])  # type: ignore[attr-defined]
                lp = lm.floor if lp is None else lp + 2 * _BACKOFF  # type: ignore[attr-defined]
        total += lp
    return -total / (len(padded) - 2)


def test_char_lm_numpy_lookup_equals_the_loop(bundle: Bundle) -> None:
    from router.ood import prepare_text

    lm = Router(bundle).classifier.lm
    assert lm is not None
    texts = [prepare_text(t, 1500) for t in _TEXTS] + _TEXTS
    assert any(len(t) >= 200 for t in texts) and any(0 < len(t) < 200 for t in texts)  # both paths run
    for t in texts:
        assert lm.mean_nll(t) == _nll_loop(lm, t), t[:40]
        if t:
            padded = "  " + t[:lm.max_chars]
            assert lm._tables.total_logprob(padded) == lm._loop_logprob(padded)  # type: ignore[union-attr]
    # a micro-batch in one numpy pass (cuckoo-hash lookup, per-text sums): the same floats
    assert lm.mean_nll_many(texts) == [_nll_loop(lm, t) for t in texts]
    assert lm.mean_nll_many([]) == []


def _featurize_reference(text: str, probs: np.ndarray, n_turns: int) -> np.ndarray:
    """featurize as first written: regex counts, the float32 sketch array, one concatenate."""
    import math

    from router.features import _CODE, _DIGITS, _MATH, _NON_ASCII, _UPPER, STATS_WINDOW, _ends

    w = _ends(text, STATS_WINDOW)
    n = max(len(w), 1)
    stats = np.asarray((math.log1p(len(text)), math.log1p(len(w.split()) * len(text) / n),
                        math.log1p((w.count("\n") + 1) * len(text) / n), math.log1p(max(n_turns, 1)),
                        *(len(p.findall(w)) / n for p in (_DIGITS, _UPPER, _NON_ASCII, _CODE, _MATH)),
                        float("?" in text), float("```" in text)), dtype=np.float32)
    return np.concatenate([stats, _sketch_reference(text), np.asarray(probs, dtype=np.float32)])


def test_featurize_is_bit_identical_to_the_reference() -> None:
    from router.features import featurize

    g = np.random.default_rng(4)
    for text in _TEXTS * 2:  # twice: the second pass reads the memoised sketch buckets
        probs = g.dirichlet(np.ones(6)).astype(np.float32)
        assert featurize(text, probs, 2).tobytes() == _featurize_reference(text, probs, 2).tobytes()
        assert featurize(text, probs.tolist(), 2).tobytes() == _featurize_reference(text, probs, 2).tobytes()


@pytest.mark.parametrize("seed", range(30))
def test_utilities_row_and_choice_equal_the_array_versions(seed: int) -> None:
    from router.policy import HeadPredictions, choose, utilities, utilities_row

    g = np.random.default_rng(seed)
    k = int(g.integers(1, 6))
    heads = HeadPredictions(g.normal(size=k).astype(np.float32), np.exp(g.normal(-6, 2, size=k)).astype(np.float32),
                            np.exp(g.normal(6, 1, size=k)).astype(np.float32))
    pref = Preference(quality=float(g.random() * 3), cost=float(g.random() * 2), latency=float(g.random()))
    ref_cost, ref_latency = float(g.random() * 0.01 + 1e-4), float(g.random() * 3000 + 10)
    u = utilities(heads, pref, ref_cost, ref_latency)
    row = utilities_row(heads.quality.tolist(), heads.cost_usd.tolist(), heads.latency_ms.tolist(), pref, ref_cost,
                        ref_latency)
    assert np.array(row, dtype=np.float32).tobytes() == u.tobytes()
    models = [f"m{i}" for i in range(k)]
    for exploration in (Exploration(kind="epsilon_greedy", epsilon=0.2), Exploration(kind="softmax", temperature=0.1)):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        assert [choose(models, u, exploration, a) for _ in range(20)] == [choose(models, row, exploration, b)
                                                                           for _ in range(20)]


def test_combine_row_equals_combine() -> None:
    from router.ood import combine, combine_row

    g = np.random.default_rng(0)
    q = {"char_nll": tuple(np.sort(g.normal(3, 1, 101))), "oov_rate": tuple(np.sort(g.random(101) * (g.random(101) > 0.5)))}
    feats = np.concatenate([g.normal(3, 2, (200, 1)), g.random((200, 1))], axis=1)
    feats[:5, 1] = 0.0
    feats[5, 0] = float(np.sort(q["char_nll"])[50])  # on a knot
    feats[6, 0] = float("nan")
    expected = combine(feats, q)
    got = [combine_row(row, [list(q["char_nll"]), list(q["oov_rate"])]) for row in feats.tolist()]
    assert got == expected.tolist()


def test_predict_row_equals_predict(bundle: Bundle) -> None:
    clf = Router(bundle).classifier
    out = clf.predict(_TEXTS)
    for i, text in enumerate(_TEXTS):
        probs, ood = clf.predict_row(text)
        assert np.array(probs, dtype=np.float32).tobytes() == out.probs[i].tobytes() and ood == bool(out.is_ood[i])


def test_cuckoo_table_finds_exactly_the_stored_keys() -> None:
    from router.tfidf import CuckooTable

    g = np.random.default_rng(1)
    keys = np.unique(g.integers(1, 2**63, 5000, dtype=np.int64)).astype(np.uint64)
    table = CuckooTable(keys.tolist(), range(len(keys)))
    queries = np.concatenate([keys[::-3], g.integers(1, 2**63, 3000, dtype=np.int64).astype(np.uint64), keys[:10]])
    index = {int(k): i for i, k in enumerate(keys)}
    assert table.lookup(queries).tolist() == [index[int(k)] for k in queries if int(k) in index]
    with pytest.raises(ValueError, match="keys"):
        CuckooTable([0], [1])


# ------------------------------------------------------------------------------------------------
# regex ASCII twins and the bound policy call (issue 7, second round): the same results as before

def _twins() -> dict[str, object]:
    from router import features, ood, tfidf

    return {"ood._WS": ood._WS, "ood._WORD": ood._WORD, "ood._ALNUM": ood._ALNUM, "tfidf._WORD_TOKEN": tfidf._WORD_TOKEN,
            "tfidf._SPACE_RUNS": tfidf._SPACE_RUNS, "features._TOKENS": features._TOKENS}


def test_ascii_twins_match_their_originals_on_ascii_text() -> None:
    import re

    from router import tfidf
    from router.features import _TOKEN
    from router.ood import prepare_text

    g = np.random.default_rng(0)
    ascii_chars = [chr(c) for c in range(128)]
    texts = ascii_chars + [a + b for a in ascii_chars for b in "a _\x1c\t9 \x0b"] + [
        "".join(g.choice(ascii_chars, size=int(g.integers(1, 60)))) for _ in range(400)] + [
        "".join(g.choice(list("ab_9 \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f.-"), size=40)) for _ in range(200)] + [
        p for p in PROMPTS if p.isascii()]
    assert all(t.isascii() for t in texts)
    for name, twin in _twins().items():
        for t in texts:
            assert twin.twin.findall(t) == twin.original.findall(t), (name, t)  # type: ignore[attr-defined]
            assert twin.twin.sub("|", t) == twin.original.sub("|", t), (name, t)  # type: ignore[attr-defined]
            a, b = twin.twin.search(t), twin.original.search(t)  # type: ignore[attr-defined]
            assert (a and a.span()) == (b and b.span()), (name, t)
    # the serving copies are the training analyzers' patterns, and non-ASCII text takes the original
    assert tfidf._WORD_TOKEN.original.pattern == tfidf.WORD_TOKEN.pattern
    assert tfidf._SPACE_RUNS.original.pattern == tfidf._WHITE_SPACES.pattern
    assert _twins()["features._TOKENS"].original.pattern == _TOKEN.pattern  # type: ignore[attr-defined]
    assert tfidf._WORD_TOKEN.findall("naïve ñandú x2") == re.findall(r"(?u)\b\w\w+\b", "naïve ñandú x2")
    assert prepare_text("A\x1cB\u2003C  d", 100) == "a b c d"  # \x1c and an em space are whitespace either way


def test_bound_policy_call_equals_session_run(bundle: Bundle) -> None:
    import threading

    from router.policy import HEADS, _BoundRun

    scorer = Router(bundle).scorer
    if scorer.info.layout != "model_feature":
        pytest.skip("per_arm policies go through predict_batch")
    d = scorer.info.n_context
    g = np.random.default_rng(2)
    x = g.normal(size=(200, d)).astype(np.float32)
    x[::7, ::5] = np.nan
    x[::11] *= 1e6

    def plain(row: np.ndarray) -> list[np.ndarray]:
        rows = scorer._template.copy()
        rows[:, :d] = row
        q, c, l = (o.reshape(-1) for o in scorer.session.run(list(HEADS), {"features": rows}))
        return [q, np.exp(c) if "cost" in scorer.info.log_heads else c, np.exp(l) if "latency" in scorer.info.log_heads else l]

    want = [plain(row) for row in x]
    got = [scorer.predict(row) for row in x]
    assert isinstance(scorer._local.run, _BoundRun)  # the bound call is what ran
    for w, h in zip(want, got):
        assert [a.tobytes() for a in w] == [h.quality.tobytes(), h.cost_usd.tobytes(), h.latency_ms.tobytes()]
    assert got[0].quality.tobytes() == want[0][0].tobytes()  # not overwritten by later calls (copies)

    # one binding per thread: concurrent calls never see another thread's context
    errors: list[int] = []

    def worker(offset: int) -> None:
        for i in range(offset, len(x), 4):
            h = scorer.predict(x[i])
            if h.quality.tobytes() != want[i][0].tobytes() or h.latency_ms.tobytes() != want[i][2].tobytes():
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_policy_without_io_binding_falls_back_to_session_run(bundle: Bundle) -> None:
    router = Router(bundle)
    scorer = router.scorer
    if scorer.info.layout != "model_feature":
        pytest.skip("per_arm policies go through predict_batch")

    class NoBinding:
        def __init__(self, session: object) -> None:
            self._session = session

        def io_binding(self) -> None:
            raise RuntimeError("no I/O binding here")

        def __getattr__(self, name: str) -> object:
            return getattr(self._session, name)

    x = np.random.default_rng(3).normal(size=scorer.info.n_context).astype(np.float32)
    want = scorer.predict(x)
    other = Router(bundle).scorer
    other.session = NoBinding(other.session)  # type: ignore[assignment]
    got = other.predict(x)
    assert other._local.run is False
    assert got.quality.tobytes() == want.quality.tobytes() and got.cost_usd.tobytes() == want.cost_usd.tobytes()
