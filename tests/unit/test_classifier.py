"""router.classifier + router.ood: calibrated probabilities, the OOD guard, and inputs that must never raise;
the sparse head evaluated with numpy (router.linear_head) equals its ONNX graph."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from router.classifier import CategoryClassifier, ClassifierInfo, apply_temperature
from router.errors import ArtifactError
from router.linear_head import SparseLinearHead
from router.onnx_session import make_session
from router.ood import CharLanguageModel, combine, prepare_text
from training.classifier import FittedClassifier, expected_calibration_error, fit_category_model, fit_temperature
from training.prompts import CATEGORIES, generate_prompt

BAD_INPUTS = {
    "empty": "",
    "whitespace": " \n\t\r  \u00a0 ",
    "lone_surrogate": "\ud800",
    "lone_low_surrogate_in_text": "abc \udfff def",
    "emoji_only": "😀🎉🔥👍🏽",
    "one_megabyte": "z" * 1_000_000,
    "mixed_scripts": "Hello 你好 Привет مرحبا שלום こんにちは",
    "base64": base64.b64encode(np.random.default_rng(1).bytes(600)).decode(),
    "gibberish": "asdkjh qweoiu zxcmnb lkjqwe poiuyt mnbvcx",
    "nul_and_controls": "\x00\x01\x02\x7f",
    "punctuation": "?!?!... ---",
    "chinese": "请用中文回答这个问题，谢谢你的帮助",
}


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(5)
    rows = [generate_prompt(c, rng) for c in CATEGORIES for _ in range(120)]
    return [r.text for r in rows], [r.category for r in rows]


@pytest.fixture(scope="module")
def fitted(corpus: tuple[list[str], list[str]]) -> FittedClassifier:
    texts, labels = corpus
    return fit_category_model(texts, labels, CATEGORIES, seed=0, family="tfidf", target_fpr=0.05)


@pytest.fixture(scope="module")
def clf(fitted: FittedClassifier) -> CategoryClassifier:
    return fitted.load()


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_ood_and_never_raises(clf: CategoryClassifier, name: str) -> None:
    out = clf.predict([BAD_INPUTS[name]])
    assert out.probs.shape == (1, len(CATEGORIES)) and np.isfinite(out.probs).all()
    assert out.probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert bool(out.is_ood[0]), f"{name}: ood_score {out.ood_score[0]:.3f} < threshold {clf.info.ood.threshold:.3f}"


def test_all_bad_inputs_in_one_batch_with_good_ones(clf: CategoryClassifier) -> None:
    good = ["how do I reverse a list in python?", "Write a short poem about autumn leaves."]
    out = clf.predict(list(BAD_INPUTS.values()) + good)
    assert out.is_ood[: len(BAD_INPUTS)].all()
    assert not out.is_ood[len(BAD_INPUTS):].any()
    assert [CATEGORIES[i] for i in out.probs[len(BAD_INPUTS):].argmax(1)] == ["code", "writing"]


def test_legacy_predict_proba_never_raises_on_bad_input(corpus: tuple[list[str], list[str]]) -> None:
    from router.onnx_session import make_session
    from training.classifier import legacy_tfidf_onnx

    texts, labels = corpus  # the pre-sparse-head string graph, as very old bundles carry it
    legacy = CategoryClassifier(make_session(legacy_tfidf_onnx(texts[::4], labels[::4], CATEGORIES)), CATEGORIES)
    probs = legacy.predict_proba(list(BAD_INPUTS.values()))
    assert probs.shape == (len(BAD_INPUTS), len(CATEGORIES)) and np.isfinite(probs).all()
    assert legacy.predict([""]).is_ood.all()


def test_empty_batch(clf: CategoryClassifier) -> None:
    out = clf.predict([])
    assert out.probs.shape == (0, len(CATEGORIES)) and out.is_ood.shape == (0,)


def test_in_distribution_fpr_near_target(clf: CategoryClassifier) -> None:
    rng = np.random.default_rng(99)  # unseen prompts from the training distribution
    texts = [generate_prompt(c, rng).text for c in CATEGORIES for _ in range(60)]
    assert clf.predict(texts).is_ood.mean() <= 0.15


def test_calibration_bounds_on_held_out(fitted: FittedClassifier, clf: CategoryClassifier) -> None:
    m = fitted.metrics
    assert m["test_ece"] <= 0.08, m
    assert 0.05 <= m["temperature"] <= 20
    rng = np.random.default_rng(123)
    rows = [generate_prompt(c, rng) for c in CATEGORIES for _ in range(50)]
    probs = clf.predict_proba([r.text for r in rows])
    truth = np.array([CATEGORIES.index(r.category) for r in rows])
    assert expected_calibration_error(probs, truth) <= 0.10


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 5))
    truth = np.array([rng.choice(5, p=np.exp(l / 2.0) / np.exp(l / 2.0).sum()) for l in logits])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert fit_temperature(probs, truth) == pytest.approx(2.0, rel=0.15)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, atol=1e-7)
    assert (apply_temperature(probs, 2.0).argmax(1) == probs.argmax(1)).all()


def test_info_round_trips_and_forbids_unknown_keys(fitted: FittedClassifier) -> None:
    raw = fitted.info.model_dump_json()
    assert ClassifierInfo.model_validate_json(raw) == fitted.info
    bad = json.loads(raw) | {"surprise": 1}
    with pytest.raises(ValueError, match="surprise"):
        ClassifierInfo.model_validate(bad)
    assert set(fitted.info.files) == set(fitted.files)


def test_from_files_names_a_missing_file(fitted: FittedClassifier, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fitted.write(tmp_path)
    assert CategoryClassifier.from_files(tmp_path, fitted.info).predict(["hi"]).probs.shape == (1, 6)
    (tmp_path / fitted.info.ood.lm_file).unlink()
    with pytest.raises(ArtifactError, match="ood_lm.json"):
        CategoryClassifier.from_files(tmp_path, fitted.info)


def test_taxonomy_mismatch_is_an_artifact_error(fitted: FittedClassifier, clf: CategoryClassifier) -> None:
    with pytest.raises(ArtifactError, match="taxonomy"):
        CategoryClassifier(clf.session, tuple(reversed(CATEGORIES)), fitted.info, clf.lm)


def test_prepare_text_is_bounded_and_encodable() -> None:
    out = prepare_text("A\ud800B  \n C" + "x" * 10_000, max_chars=50)
    assert len(out) == 50 and out.startswith("a\ufffdb c")
    out.encode("utf-8")
    assert prepare_text(None, 10) == "" and prepare_text(12, 10) == "12"


def test_char_lm_ranks_language_over_noise() -> None:
    lm = CharLanguageModel.fit([prepare_text(t, 1000) for t in ["the cat sat on the mat", "the dog ate the bone"] * 5])
    assert lm.mean_nll("the cat ate") < lm.mean_nll("xqzv jkwp")
    assert lm.oov_rate("the cat") == 0.0 and lm.oov_rate("der hund") == 1.0
    assert CharLanguageModel.from_json(lm.to_json()) == lm


def test_combine_is_the_max_of_the_per_feature_cdfs() -> None:
    q = {"char_nll": tuple(np.linspace(0, 10, 11)), "oov_rate": tuple(np.zeros(11))}
    feats = np.array([[-1.0, 0.0], [5.0, 0.0], [20.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(combine(feats, q), [0.0, 5 / 11, 1.0, 1.0])


def test_fit_rejects_too_few_examples_and_bad_fpr() -> None:
    texts = [f"prompt number {i}" for i in range(30)]
    with pytest.raises(ValueError, match="at least 10"):
        fit_category_model(texts, ["code"] * 25 + ["math"] * 5, ("code", "math"), family="tfidf")
    with pytest.raises(ValueError, match="target_fpr"):
        fit_category_model(texts, ["code", "math"] * 15, ("code", "math"), family="tfidf", target_fpr=1.5)
    with pytest.raises(ValueError, match="not in the taxonomy"):
        fit_category_model(texts, ["code", "poetry"] * 15, ("code", "math"), family="tfidf")


def test_fit_works_on_a_tiny_corpus() -> None:
    rng = np.random.default_rng(3)
    rows = [generate_prompt(c, rng) for c in ("code", "math") for _ in range(12)]
    fitted = fit_category_model([r.text for r in rows], [r.category for r in rows], ("code", "math"), family="tfidf")
    assert fitted.load().predict(["solve 3x + 1 = 7"]).probs.shape == (1, 2)


def test_source_category_weights_balance_categories_and_sources() -> None:
    from training.classifier import source_category_weights

    y = np.array([0] * 90 + [0] * 10 + [1] * 20)
    src = ["big"] * 90 + ["small"] * 10 + ["big"] * 20
    w = source_category_weights(y, src)
    assert w.mean() == pytest.approx(1.0)
    assert w[:100].sum() == pytest.approx(w[100:].sum())  # each category weighs the same
    assert w[:90].sum() == pytest.approx(w[90:100].sum())  # each source inside a category weighs the same
    with pytest.raises(ValueError, match="same length"):
        source_category_weights(y, src[:-1])


def test_encoder_head_c_is_chosen_by_leave_one_source_out() -> None:
    from training.classifier import ENCODER_C_GRID, EncoderHeadTrainer, encoder_available

    if not encoder_available():
        pytest.skip("encoder packages not installed")
    rng = np.random.default_rng(7)
    cats = ("code", "math", "chat")
    rows = [generate_prompt(c, rng) for c in cats for _ in range(60)]
    centers = rng.normal(size=(3, 384))
    emb = np.stack([centers[cats.index(r.category)] + rng.normal(scale=3.0, size=384) for r in rows]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sources = [("a", "b", "c")[i % 3] for i in range(len(rows))]
    fitted = fit_category_model([r.text for r in rows], [r.category for r in rows], cats, family="encoder",
                                sources=sources, select_by="loso", embeddings=emb, encoder_inputs=("head",))
    sel = fitted.metrics["selection"]["encoder"]
    assert fitted.info.encoder is not None and fitted.info.encoder.embedding == "int8_single_v1"  # what it was fit on
    assert set(sel["loso_mean_macro_f1_by_c"]) == {str(c) for c in ENCODER_C_GRID}
    assert sel["loso_mean_macro_f1"] == max(sel["loso_mean_macro_f1_by_c"].values())
    assert sel["c"] in ENCODER_C_GRID and set(sel["loso"]) == {"a", "b", "c"}
    # the shipped temperature is fitted on the chosen C's out-of-source predictions, not on validation
    from training.classifier import fit_temperature

    y = np.array([cats.index(r.category) for r in rows])
    src = np.array(sources)
    oos = [(np.flatnonzero(src == s), EncoderHeadTrainer(cats, c=sel["c"]).fit(
        emb[src != s], [rows[i].category for i in np.flatnonzero(src != s)], src[src != s]).predict_proba(emb[src == s]))
        for s in ("a", "b", "c")]
    want = fit_temperature(np.concatenate([p for _, p in oos]), np.concatenate([y[r] for r, _ in oos]))
    assert fitted.metrics["temperature_fit_on"] == "leave-one-source-out predictions"
    assert fitted.info.temperature == fitted.metrics["temperature"] == pytest.approx(want, rel=1e-3)
    holdout = fit_category_model([r.text for r in rows], [r.category for r in rows], cats, family="encoder",
                                 embeddings=emb, encoder_inputs=("head",))
    assert holdout.metrics["temperature_fit_on"] == "validation split"
    assert holdout.metrics["temperature"] == holdout.metrics["temperature_validation"]
    # sources change the head: weighted and unweighted fits differ when sources are unbalanced
    skew = ["a" if r.category == "code" and i % 4 else "b" for i, r in enumerate(rows)]
    labels = [r.category for r in rows]
    weighted = EncoderHeadTrainer(cats, c=sel["c"]).fit(emb, labels, skew).predict_proba(emb)
    plain = EncoderHeadTrainer(cats, c=sel["c"]).fit(emb, labels).predict_proba(emb)
    assert not np.allclose(weighted, plain)


# ------------------------------------------------------------------------------------------------
# the encoder head's input: head, opening and tail token windows (router.classifier.encoder_features)

LONG = ("please look at this function: " + "def add_one(x):\n    return x + 1\n" * 60
        + "why does it fail when I pass a string?")


@pytest.fixture(scope="module")
def encoder():  # type: ignore[no-untyped-def]
    from training.classifier import encoder_available, load_encoder

    if not encoder_available():
        pytest.skip("encoder packages not installed")
    return load_encoder(threads=1)


def test_token_windows_cut_long_texts_and_reuse_the_head_for_short_ones(encoder) -> None:  # type: ignore[no-untyped-def]
    short = "how do I sort a list in python?"
    ids = encoder._full_tokenizer.encode(LONG).ids
    assert len(ids) > 128 and encoder.window_ids(short, 24) is None and encoder.window_ids(short, 128, last=True) is None
    assert encoder.window_ids(LONG, 24) == ids[:23] + [ids[-1]]  # [CLS] + first 22 pieces + [SEP]
    assert encoder.window_ids(LONG, 128, last=True) == [ids[0]] + ids[-127:]  # [CLS] + last 126 + [SEP]
    head = encoder.encode([short, LONG])
    opening = encoder.encode_window([short, LONG], 24, full=head)
    tail = encoder.encode_window([short, LONG], 128, last=True, full=head)
    assert opening[0].tobytes() == head[0].tobytes() == tail[0].tobytes()  # short: no extra encoder run
    assert float(opening[1] @ head[1]) < 0.999 and float(tail[1] @ head[1]) < 0.999
    np.testing.assert_allclose(np.linalg.norm(tail, axis=1), 1.0, atol=1e-5)
    alone = encoder.encode_window([LONG], 128, last=True)  # batch-independent, with or without ``full``
    assert alone[0].tobytes() == tail[1].tobytes()
    with pytest.raises(ValueError, match="max_length"):
        encoder.encode_window([short], 129)
    with pytest.raises(ValueError, match="at least 3"):
        encoder.window_ids(short, 2)


def test_encoder_features_stack_the_named_inputs(encoder) -> None:  # type: ignore[no-untyped-def]
    from router.classifier import encoder_features

    texts = ["how do I sort a list in python?", prepare_text(LONG, 1500), ""]
    x = encoder_features(encoder, texts, ("head", "opening", "tail"), 24)
    head = encoder.encode(texts)
    assert x.shape == (3, 3 * 384) and x.dtype == np.float32
    assert x[:, :384].tobytes() == head.tobytes()
    assert x[:, 384:768].tobytes() == encoder.encode_window(texts, 24, full=head).tobytes()
    assert x[:, 768:].tobytes() == encoder.encode_window(texts, 128, last=True).tobytes()
    assert encoder_features(encoder, texts, ("head",)).tobytes() == head.tobytes()
    with pytest.raises(ValueError, match="unknown encoder input 'middle'"):
        encoder_features(encoder, texts, ("middle",))


def test_encoder_info_inputs_default_validate_and_must_fit_the_head() -> None:
    from router.classifier import EncoderInfo, OODInfo
    from training.classifier import EncoderHeadTrainer

    base = {"name": "m", "model_file": "e.onnx", "tokenizer_file": "t.json", "max_length": 128, "dim": 384, "source": "x"}
    assert EncoderInfo.model_validate(base).inputs == ("head",)  # older bundles: the head embedding alone
    with pytest.raises(ValueError, match="distinct"):
        EncoderInfo.model_validate(base | {"inputs": ["head", "head"]})
    with pytest.raises(ValueError, match="opening_tokens"):
        EncoderInfo.model_validate(base | {"inputs": ["head", "opening"], "opening_tokens": 200})
    with pytest.raises(ValueError):
        EncoderInfo.model_validate(base | {"inputs": ["middle"]})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 384)).astype(np.float32)
    session = make_session(EncoderHeadTrainer(("a", "b")).fit(x, ["a", "b"] * 30).to_onnx())
    info = ClassifierInfo(kind="encoder_linear", taxonomy=("a", "b"), files=("classifier.onnx", "lm.json"), max_chars=100,
                          temperature=1.0, encoder=EncoderInfo.model_validate(base | {"inputs": ["head", "opening"]}),
                          ood=OODInfo(lm_file="lm.json", quantiles={"char_nll": (0.0,), "oov_rate": (0.0,)},
                                      threshold=1.0, target_fpr=0.05, validation_fpr=0.05))
    with pytest.raises(ArtifactError, match="reads 384 features; encoder inputs \\['head', 'opening'\\] give 768"):
        CategoryClassifier(session, ("a", "b"), info, CharLanguageModel.fit(["a b"]), encoder=object())


def test_fit_refuses_embeddings_of_another_width() -> None:
    rng = np.random.default_rng(1)
    rows = [generate_prompt(c, rng) for c in CATEGORIES for _ in range(12)]
    emb = rng.normal(size=(len(rows), 384)).astype(np.float32)
    with pytest.raises(ValueError, match=r"need \(72, 768\)"):
        fit_category_model([r.text for r in rows], [r.category for r in rows], CATEGORIES, family="encoder",
                           embeddings=emb, encoder_inputs=("head", "opening"))


# ------------------------------------------------------------------------------------------------
# the sparse head evaluated with numpy (router.linear_head) from classifier.onnx's own weights

ODD = ["", " ", "x", "ab", "\ud800", "😀 x", "a  b \t\t c", "\x00abc\x01 def", "日本語に翻訳してください",
       "café crème, s'il vous plaît", "def f(x):\n    return x**2  # ünïcödé", "x" * 40_000]


def _probe(corpus: tuple[list[str], list[str]]) -> list[str]:
    return corpus[0][::4] + ODD


def test_head_is_read_from_the_onnx_file_and_equals_onnxruntime(fitted: FittedClassifier,
                                                                 corpus: tuple[list[str], list[str]]) -> None:
    clf = fitted.load()
    assert clf.head is not None and clf.vocabulary is not None
    session = make_session(fitted.files[fitted.info.model_file])
    for text in _probe(corpus):
        idx, val = clf.vocabulary.transform(prepare_text(text, clf.max_chars))
        feed = {"indices": idx, "values": val} if idx.size else clf._empty_row
        (expected,) = session.run(["probabilities"], feed)
        got = clf._raw_rows([prepare_text(text, clf.max_chars)])[0]
        np.testing.assert_allclose(got, expected[0], rtol=0, atol=1e-12)


def test_numpy_head_gives_the_served_numbers_of_the_onnxruntime_head(fitted: FittedClassifier,
                                                                     corpus: tuple[list[str], list[str]]) -> None:
    """Calibrated float32 probabilities and OOD flags (what decisions read) are identical with either head."""
    fast = fitted.load()
    reference = CategoryClassifier(fast.session, fast.taxonomy, fast.info, fast.lm, None, fast.vocabulary)
    assert reference.head is None
    probe = _probe(corpus)
    a, b = fast.predict(probe), reference.predict(probe)
    assert a.probs.tobytes() == b.probs.tobytes()
    assert a.is_ood.tolist() == b.is_ood.tolist() and a.ood_score.tolist() == b.ood_score.tolist()


def test_a_batch_equals_its_rows_one_at_a_time(fitted: FittedClassifier, corpus: tuple[list[str], list[str]]) -> None:
    clf = fitted.load()
    assert clf.head is not None and clf.vocabulary is not None
    prepared = [prepare_text(t, clf.max_chars) for t in _probe(corpus)]
    rows = clf.vocabulary.transform_many(prepared)
    logits = clf.head.logits(rows)
    for s, text in enumerate(prepared):
        idx, val = clf.vocabulary.transform(text)
        got_idx, got_val = rows.row(s)
        assert idx.tolist() == got_idx.tolist() and val.tobytes() == got_val.tobytes()
        assert clf.head.logits_row(idx, val) == logits[s]
        d_idx, d_val = clf.vocabulary._transform_dicts(text)  # the plain string path: same result
        assert d_idx.tolist() == idx.tolist() and d_val.tobytes() == val.tobytes()
    plain = clf.vocabulary._rows(clf.vocabulary._keys_dicts(prepared), len(prepared))  # many rows, string path
    assert plain.indptr.tolist() == rows.indptr.tolist() and plain.indices.tolist() == rows.indices.tolist()
    assert plain.values.tobytes() == rows.values.tobytes()
    assert clf.vocabulary.transform_many([]).indptr.tolist() == [0]


def test_another_graph_keeps_onnxruntime_and_a_misfit_head_is_refused(fitted: FittedClassifier) -> None:
    import onnx

    model = onnx.load_from_string(fitted.files[fitted.info.model_file])
    model.graph.node[3].op_type = "Sub"  # not the sparse head's graph any more
    assert SparseLinearHead.from_onnx(model.SerializeToString()) is None
    assert SparseLinearHead.from_onnx(b"not onnx") is None
    files = {**fitted.files, fitted.info.model_file: model.SerializeToString()}
    other = CategoryClassifier.from_bytes(files, fitted.info)
    assert other.head is None  # served by onnxruntime as before
    clf = fitted.load()
    assert clf.head is not None
    small = SparseLinearHead(clf.head.weights[:-1], clf.head.bias)
    with pytest.raises(ArtifactError, match="TF-IDF features"):
        CategoryClassifier(clf.session, clf.taxonomy, clf.info, clf.lm, None, clf.vocabulary, small)


def test_non_finite_weights_give_a_non_finite_row_not_an_exception(fitted: FittedClassifier) -> None:
    clf = fitted.load()
    assert clf.head is not None
    weights = clf.head.weights.copy()
    weights[:] = np.nan
    broken = CategoryClassifier(clf.session, clf.taxonomy, clf.info, clf.lm, None, clf.vocabulary,
                                SparseLinearHead(weights, clf.head.bias))
    probs, _ = broken.predict_row("how do I sort a list in python?")
    assert not all(np.isfinite(probs))  # the router counts it and falls back
    out = broken.predict(["how do I sort a list in python?", "solve 2x + 3 = 7 for x"])  # the batch path too
    assert not np.isfinite(out.probs).any()
