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


def test_bundle_onnx_matches_native_on_logged_prompts(bundle, sim_logs) -> None:  # type: ignore[no-untyped-def]
    """The shipped bundle, re-fitted natively from the same data, gives the same probabilities."""
    from router.log_schema import read_logs
    from training.bundle_builder import labelled_from_logs

    data = labelled_from_logs(read_logs(sim_logs))
    taxonomy = bundle.manifest.router.taxonomy
    native = CategoryTrainer(taxonomy).fit(data.texts, data.labels)
    shipped = CategoryClassifier(make_session(bundle.file("classifier.onnx")), taxonomy)
    probe = data.texts[:200] + TRICKY
    np.testing.assert_allclose(shipped.predict_proba(probe), native.predict_proba(probe), atol=1e-5)


def test_unfitted_trainers_say_so() -> None:
    from router.errors import NotFittedError

    with pytest.raises(NotFittedError, match="call fit"):
        CategoryTrainer(CATEGORIES).to_onnx()


def test_classifier_rejects_labels_outside_taxonomy() -> None:
    with pytest.raises(ValueError, match="not in the taxonomy"):
        CategoryTrainer(("code", "math")).fit(["a b", "c d"], ["code", "poetry"])
    with pytest.raises(ValueError, match="no training examples"):
        CategoryTrainer(("code", "math")).fit(["a b", "c d"], ["code", "code"])
