"""Category classifier at serving time: text -> calibrated probabilities in taxonomy order + OOD score.

Model kinds, trained and chosen by ``training.classifier.fit_category_model``:

* ``tfidf_sparse_linear`` (what training writes): ``router.tfidf.TfidfVocabulary`` (file
  ``tfidf_vocab.json``) turns a prepared text into its word 1-2-gram + char 2-4-gram TF-IDF vector
  (sorted feature indices + values, float64); ``classifier.onnx`` is the logistic-regression head on it:
  inputs ``indices`` int64 (L,) and ``values`` float64 (L,), output ``probabilities`` float64 (1, C),
  Gather + MatMul + Add + Softmax. Serving evaluates that graph with numpy from its own initializers
  (``router.linear_head``: no onnxruntime call per request; a graph of another shape still runs in
  onnxruntime, one call per text). Matches scikit-learn to ~1e-12 (tests pin 1e-10) and the
  onnxruntime head to ~1e-15; the n-grams are counted in numpy instead of onnxruntime's string ops, a
  micro-batch in one pass (``transform_many``), and its OOD language model in one pass too.
* ``tfidf_linear`` (bundles written before): one ONNX graph (TF-IDF + logistic regression), input
  ``text`` string (N, 1), output ``probabilities`` (N, C); still loaded and served. Run one row per
  call: onnxruntime's string tokenizer pads a batch with a filler token that char n-grams can see.
* ``encoder_linear``: ``encoder.onnx`` + ``tokenizer.json`` (router.encoder) -> 384-d embedding ->
  ``classifier.onnx`` logistic-regression head (input ``embedding`` float (N, 384)).

Calibration: temperature scaling on log-probabilities, ``p_T = softmax(log p / T)`` (T fitted on
validation data), per row in plain Python (six numbers: numpy's per-call overhead was most of its
cost). OOD: ``router.ood`` (detectors combined, threshold at a target FPR on in-distribution
validation data). Any ``str`` -- empty, whitespace, 1 MB, emoji, lone surrogates -- yields a result,
never an exception: ``router.ood.prepare_text`` makes it encodable and bounded first.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.errors import ArtifactError
from router.linear_head import SparseLinearHead, softmax_row
from router.ood import OOD_FEATURES, CharLanguageModel, combine_row, has_content, prepare_text
from router.tfidf import TfidfVocabulary
from router.types import LEGACY_EMBEDDING, EmbeddingKind, FloatArray

CLASSIFIER_INFO_FORMAT = 1
LEGACY_MAX_CHARS = 32_000


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


EncoderInput = Literal["head", "opening", "tail"]
OPENING_TOKENS = 24


class EncoderInfo(_Frozen):
    """The sentence encoder a ``encoder_linear`` classifier reads embeddings from.

    ``inputs``: the embeddings concatenated, in order, into the head's input (``encoder_features``):
    ``head`` the prompt's first ``max_length`` tokens (the embedding the semantic cache shares),
    ``opening`` its first ``opening_tokens`` tokens (the request itself, before any pasted material
    dilutes it), ``tail`` its last ``max_length`` tokens. Absent in older bundles: ``("head",)``."""

    name: str
    model_file: str
    tokenizer_file: str
    max_length: int = Field(gt=0)
    dim: int = Field(gt=0)
    source: str  # where training took the files from (package==version)
    embedding: EmbeddingKind = LEGACY_EMBEDDING  # what the head was fitted on (absent: older bundles)
    inputs: tuple[EncoderInput, ...] = ("head",)
    opening_tokens: int = Field(default=OPENING_TOKENS, ge=3)

    @model_validator(mode="after")
    def _inputs_fit(self) -> EncoderInfo:
        if not self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"encoder inputs must be distinct and non-empty; got {list(self.inputs)}")
        if "opening" in self.inputs and self.opening_tokens > self.max_length:
            raise ValueError(f"opening_tokens {self.opening_tokens} exceeds max_length {self.max_length}")
        return self


def encoder_features(encoder: Any, prepared: Sequence[str], inputs: Sequence[str] = ("head",),
                     opening_tokens: int = OPENING_TOKENS, head: FloatArray | None = None) -> FloatArray:
    """The head's input for prepared texts: the ``inputs`` embeddings side by side, (N, 384 * len(inputs))
    float32. Training and serving both call this (one featurization). ``head``: the texts' ``encode``
    embeddings when the caller has them (training caches them); a text shorter than a window reuses its
    head embedding, so only long prompts pay for an extra encoder run per extra input."""
    full = np.asarray(head, dtype=np.float32) if head is not None else encoder.encode(prepared)
    blocks = []
    for name in inputs:
        if name == "head":
            blocks.append(full)
        elif name == "opening":
            blocks.append(encoder.encode_window(prepared, opening_tokens, full=full))
        elif name == "tail":
            blocks.append(encoder.encode_window(prepared, encoder.max_length, last=True, full=full))
        else:
            raise ValueError(f"unknown encoder input {name!r} (known: head, opening, tail)")
    return np.hstack(blocks) if len(blocks) > 1 else blocks[0]


class OODInfo(_Frozen):
    """``score = max_k CDF_k(feature_k)``; OOD when ``score >= threshold`` (see router.ood)."""

    kind: Literal["quantile_max"] = "quantile_max"
    features: tuple[str, ...] = OOD_FEATURES
    lm_file: str
    quantiles: dict[str, tuple[float, ...]]
    threshold: float = Field(ge=0, le=1)
    target_fpr: float = Field(gt=0, lt=1)
    validation_fpr: float = Field(ge=0, le=1)


class ClassifierInfo(_Frozen):
    """How to run the classifier files of a bundle; stored in the manifest as ``classifier``."""

    format: int = CLASSIFIER_INFO_FORMAT
    kind: Literal["tfidf_sparse_linear", "tfidf_linear", "encoder_linear"]
    taxonomy: tuple[str, ...]
    model_file: str = "classifier.onnx"
    files: tuple[str, ...]
    max_chars: int = Field(gt=0)
    temperature: float = Field(gt=0)
    ood: OODInfo
    encoder: EncoderInfo | None = None
    vocab_file: str | None = None  # tfidf_sparse_linear: the TfidfVocabulary JSON

    @model_validator(mode="after")
    def _kind_has_its_files(self) -> ClassifierInfo:
        if self.kind == "tfidf_sparse_linear" and (self.vocab_file is None or self.vocab_file not in self.files):
            raise ValueError(f"kind tfidf_sparse_linear needs vocab_file among files {list(self.files)}; "
                             f"got vocab_file={self.vocab_file!r}")
        return self


@dataclass(frozen=True, slots=True)
class ClassifierOutput:
    """``probs`` (N, C) float32 calibrated, taxonomy order; ``ood_score`` (N,) float64 in [0, 1];
    ``is_ood`` (N,) bool."""

    probs: FloatArray
    ood_score: np.ndarray
    is_ood: np.ndarray


def apply_temperature(probs: np.ndarray, temperature: float) -> FloatArray:
    """softmax(log p / T) row-wise; T = 1 returns ``probs`` (as float32). (Serving uses
    ``temperature_row``, the same arithmetic on Python floats.)"""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0 or p.size == 0:
        return p.astype(np.float32)
    z = np.log(np.clip(p, 1e-30, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def temperature_row(p: Sequence[float], temperature: float) -> list[float]:
    """``apply_temperature`` of one row on Python floats (float64, same operations; the caller casts to
    float32). NaN/inf in ``p`` give a non-finite row, as in numpy."""
    if temperature == 1.0:
        return list(p)
    log = math.log
    z = [log(max(x, 1e-30)) / temperature for x in p]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = 0.0
    for v in e:
        total += v
    return [v / total for v in e]


class CategoryClassifier:
    """Runs the classifier files of a bundle.

    ``CategoryClassifier(session, taxonomy)`` (no ``info``) is the legacy single-graph form: raw
    probabilities, OOD only for content-free text. ``from_files(bundle_dir, info)`` is the full form.
    """

    def __init__(self, session: ort.InferenceSession, taxonomy: Sequence[str], info: ClassifierInfo | None = None,
                 lm: CharLanguageModel | None = None, encoder: object | None = None,
                 vocabulary: TfidfVocabulary | None = None, head: SparseLinearHead | None = None) -> None:
        self.session = session
        self.taxonomy = tuple(taxonomy)
        self.info = info
        self.lm = lm
        self.encoder = encoder
        self.vocabulary = vocabulary
        outputs = [o.name for o in session.get_outputs()]
        if "probabilities" not in outputs:
            raise ArtifactError(f"classifier.onnx has outputs {outputs}; expected 'probabilities' (export with zipmap off)")
        self._input = session.get_inputs()[0].name
        # knots as lists in OOD_FEATURES order, once (combine_row bisects them per request)
        missing = [k for k in OOD_FEATURES if info is not None and k not in info.ood.quantiles]
        if missing:
            raise ArtifactError(f"classifier OOD info has no quantiles for {missing} (needs {list(OOD_FEATURES)})")
        self._quantiles = [list(info.ood.quantiles[k]) for k in OOD_FEATURES] if info else []
        if info is not None and tuple(info.taxonomy) != self.taxonomy:
            raise ArtifactError(f"classifier taxonomy {list(info.taxonomy)} differs from the router's {list(self.taxonomy)}")
        if info is not None and info.kind == "encoder_linear" and encoder is None:
            raise ArtifactError("an encoder_linear classifier needs its sentence encoder")
        if info is not None and info.encoder is not None:
            width = session.get_inputs()[0].shape[-1]
            want = info.encoder.dim * len(info.encoder.inputs)
            if isinstance(width, int) and width != want:
                raise ArtifactError(f"{info.model_file} reads {width} features; encoder inputs "
                                    f"{list(info.encoder.inputs)} give {want}")
        self._sparse = info is not None and info.kind == "tfidf_sparse_linear"
        if self._sparse and vocabulary is None:
            raise ArtifactError("a tfidf_sparse_linear classifier needs its TF-IDF vocabulary")
        if self._sparse and [i.name for i in session.get_inputs()] != ["indices", "values"]:
            raise ArtifactError(f"{info.model_file if info else 'classifier.onnx'} has inputs "
                                f"{[i.name for i in session.get_inputs()]}; a tfidf_sparse_linear head reads "
                                "['indices', 'values']")
        self._empty_row = {"indices": np.zeros(1, dtype=np.int64), "values": np.zeros(1, dtype=np.float64)}
        if head is not None and (not self._sparse or vocabulary is None or head.n_features != vocabulary.n_features
                                 or head.bias.size != len(self.taxonomy)):
            raise ArtifactError(f"the sparse head ({head.n_features} features, {head.bias.size} classes) does not fit "
                                f"this classifier ({vocabulary.n_features if vocabulary else 0} TF-IDF features, "
                                f"{len(self.taxonomy)} categories)")
        self.head = head  # numpy evaluation of the sparse head graph (router.linear_head); None: onnxruntime

    @classmethod
    def from_files(cls, bundle_dir: str | Path, info: ClassifierInfo, *, threads: int = 1) -> CategoryClassifier:
        """Load ``info.files`` from ``bundle_dir``. Raises ``ArtifactError`` naming a missing/bad file."""
        d = Path(bundle_dir)
        missing = [f for f in info.files if not (d / f).is_file()]
        if missing:
            raise ArtifactError(f"{d}: classifier file(s) {missing} missing (classifier info lists {list(info.files)})")
        return cls.from_bytes({f: (d / f).read_bytes() for f in info.files}, info, threads=threads)

    @classmethod
    def from_bytes(cls, files: Mapping[str, bytes], info: ClassifierInfo, *, threads: int = 1) -> CategoryClassifier:
        """Same as ``from_files`` for in-memory files (training evaluates what it is about to write)."""
        from router.onnx_session import make_session

        absent = [f for f in info.files if f not in files]
        if absent:
            raise ArtifactError(f"classifier file(s) {absent} missing (classifier info lists {list(info.files)})")
        try:
            lm = CharLanguageModel.from_json(files[info.ood.lm_file])
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{info.ood.lm_file}: not a character language model ({e})") from e
        vocabulary = None
        if info.kind == "tfidf_sparse_linear" and info.vocab_file is not None:
            try:
                vocabulary = TfidfVocabulary.from_json(files[info.vocab_file])
            except (ValueError, KeyError, TypeError) as e:
                raise ArtifactError(f"{info.vocab_file}: not a TF-IDF vocabulary this turnout can use ({e})") from e
        encoder = None
        if info.encoder is not None:
            from router.encoder import encoder_for

            encoder = encoder_for(files[info.encoder.model_file], files[info.encoder.tokenizer_file],
                                  max_length=info.encoder.max_length, embedding=info.encoder.embedding, threads=threads)
        session = make_session(files[info.model_file], threads=threads)
        head = None
        if vocabulary is not None:
            head = SparseLinearHead.from_onnx(files[info.model_file])
            if head is not None and head.n_features != vocabulary.n_features:
                raise ArtifactError(f"{info.model_file} has {head.n_features} feature rows; {info.vocab_file} has "
                                    f"{vocabulary.n_features} n-grams")
        return cls(session, info.taxonomy, info, lm, encoder, vocabulary, head)

    @property
    def row_separable(self) -> bool:
        """True when ``predict`` of many texts equals ``predict`` of each alone, bit for bit: the TF-IDF
        graphs run one row per call and the rest is row-wise arithmetic. The encoder head runs one
        matmul over the whole batch, which can move a probability in the last bits."""
        return self.info is None or self.info.kind != "encoder_linear"

    @property
    def max_chars(self) -> int:
        return self.info.max_chars if self.info is not None else LEGACY_MAX_CHARS

    def predict(self, texts: Sequence[str]) -> ClassifierOutput:
        prepared = [prepare_text(t, self.max_chars) for t in texts]
        raw_rows = self._raw_rows(prepared)
        if self.info is not None and self.lm is not None and len(prepared) > 1:  # one numpy pass for the batch
            nlls = self.lm.mean_nll_many([t if has_content(t) else "" for t in prepared])
            rows = [self._finish(t, raw, nll) for t, raw, nll in zip(prepared, raw_rows, nlls)]
        else:
            rows = [self._finish(t, raw) for t, raw in zip(prepared, raw_rows)]
        probs = np.array([r[0] for r in rows], dtype=np.float32).reshape(len(prepared), len(self.taxonomy))
        return ClassifierOutput(probs, np.array([r[1] for r in rows], dtype=np.float64),
                                np.array([r[2] for r in rows], dtype=bool))

    def predict_row(self, text: str) -> tuple[list[float], bool]:
        """``predict([text])`` as Python values: (calibrated probabilities -- float32 values -- in
        taxonomy order, out of distribution?). The same numbers, without building arrays per request."""
        t = prepare_text(text, self.max_chars)
        if self._sparse and self.head is not None and self.vocabulary is not None:  # = _raw_rows([t])[0]
            raw = softmax_row(self.head.logits_row(*self.vocabulary.transform(t)))
        else:
            raw = self._raw_rows([t])[0]
        probs, _, flag = self._finish(t, raw)
        return probs, flag

    def _finish(self, text: str, raw: list[float], nll: float | None = None) -> tuple[list[float], float, bool]:
        """Calibration and OOD score of one prepared text (per row in plain Python: a handful of numbers);
        ``nll``: ``lm.mean_nll(text)`` when the caller computed it for a whole batch."""
        if self.info is None or self.lm is None:
            empty = not has_content(text)
            return array("f", raw).tolist(), float(empty), empty
        probs = array("f", temperature_row(raw, self.info.temperature)).tolist()  # float32, as numpy casts
        if not has_content(text):  # no letter or digit at all: OOD by rule
            return probs, 1.0, True
        score = combine_row((self.lm.mean_nll(text) if nll is None else nll, self.lm.oov_rate(text)), self._quantiles)
        return probs, score, score >= self.info.ood.threshold

    def predict_proba(self, texts: Sequence[str]) -> FloatArray:
        """(N, C) float32 calibrated probabilities in taxonomy order."""
        return self._calibrated([prepare_text(t, self.max_chars) for t in texts])

    def raw_proba(self, prepared: Sequence[str]) -> FloatArray:
        """Uncalibrated ONNX probabilities of already-prepared texts (N, C) float32."""
        return np.array(self._raw_rows(prepared), dtype=np.float32).reshape(len(prepared), len(self.taxonomy))

    def _raw_rows(self, prepared: Sequence[str]) -> list[list[float]]:
        """Uncalibrated probabilities, one list of C Python floats per text (float64 for the sparse head)."""
        n = len(prepared)
        if n == 0:
            return []
        if self._sparse and self.head is not None:
            assert self.vocabulary is not None
            if n == 1:
                return [softmax_row(self.head.logits_row(*self.vocabulary.transform(prepared[0])))]
            return self.head.probabilities(self.vocabulary.transform_many(prepared))
        if self._sparse:
            assert self.vocabulary is not None
            rows = []
            for t in prepared:
                indices, values = self.vocabulary.transform(t)
                feed = {"indices": indices, "values": values} if indices.size else self._empty_row
                rows.append(self.session.run(["probabilities"], feed)[0])
            probs = np.concatenate(rows, axis=0)
        elif self.info is not None and self.info.kind == "encoder_linear":
            enc = self.info.encoder
            emb = encoder_features(self.encoder, prepared, enc.inputs, enc.opening_tokens) if enc else \
                self.encoder.encode(prepared)  # type: ignore[attr-defined]
            (probs,) = self.session.run(["probabilities"], {self._input: emb})
        else:
            rows = [self.session.run(["probabilities"], {self._input: np.array([[t]], dtype=object)})[0]
                    for t in prepared]
            probs = np.concatenate(rows, axis=0)
        if probs.ndim != 2 or probs.shape[1] != len(self.taxonomy):
            raise ArtifactError(f"classifier.onnx returned shape {probs.shape} for a taxonomy of {len(self.taxonomy)}")
        return probs.tolist()  # type: ignore[no-any-return]

    def _calibrated(self, prepared: Sequence[str]) -> FloatArray:
        rows = self._raw_rows(prepared)
        if self.info is not None:
            t = self.info.temperature
            rows = [temperature_row(r, t) for r in rows]
        return np.array(rows, dtype=np.float32).reshape(len(prepared), len(self.taxonomy))
