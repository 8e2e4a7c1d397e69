"""Category classifier at serving time: text -> calibrated probabilities in taxonomy order + OOD score.

Two model kinds, both trained and chosen by ``training.classifier.fit_category_model``:

* ``tfidf_linear``: one ONNX graph (word 1-2-gram + char 2-4-gram TF-IDF -> logistic regression),
  input ``text`` string (N, 1), output ``probabilities`` (N, C). Run one row per call: onnxruntime's
  string tokenizer pads a batch with a filler token that char n-grams can see, so batched rows can
  differ from single rows by ~1e-3 (single rows match scikit-learn to 1e-7).
* ``encoder_linear``: ``encoder.onnx`` + ``tokenizer.json`` (router.encoder) -> 384-d embedding ->
  ``classifier.onnx`` logistic-regression head (input ``embedding`` float (N, 384)).

Calibration: temperature scaling on log-probabilities, ``p_T = softmax(log p / T)`` (T fitted on
validation data). OOD: ``router.ood`` (three detectors, threshold at a target FPR on in-distribution
validation data). Any ``str`` -- empty, whitespace, 1 MB, emoji, lone surrogates -- yields a result,
never an exception: ``router.ood.prepare_text`` makes it encodable and bounded first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field

from router.errors import ArtifactError
from router.ood import OOD_FEATURES, CharLanguageModel, combine, has_content, ood_features, prepare_text
from router.types import FloatArray

CLASSIFIER_INFO_FORMAT = 1
LEGACY_MAX_CHARS = 32_000


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncoderInfo(_Frozen):
    """The sentence encoder a ``encoder_linear`` classifier reads embeddings from."""

    name: str
    model_file: str
    tokenizer_file: str
    max_length: int = Field(gt=0)
    dim: int = Field(gt=0)
    source: str  # where training took the files from (package==version)


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
    kind: Literal["tfidf_linear", "encoder_linear"]
    taxonomy: tuple[str, ...]
    model_file: str = "classifier.onnx"
    files: tuple[str, ...]
    max_chars: int = Field(gt=0)
    temperature: float = Field(gt=0)
    ood: OODInfo
    encoder: EncoderInfo | None = None


@dataclass(frozen=True, slots=True)
class ClassifierOutput:
    """``probs`` (N, C) float32 calibrated, taxonomy order; ``ood_score`` (N,) float64 in [0, 1];
    ``is_ood`` (N,) bool."""

    probs: FloatArray
    ood_score: np.ndarray
    is_ood: np.ndarray


def apply_temperature(probs: np.ndarray, temperature: float) -> FloatArray:
    """softmax(log p / T) row-wise; T = 1 returns ``probs`` (as float32)."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0 or p.size == 0:
        return p.astype(np.float32)
    z = np.log(np.clip(p, 1e-30, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class CategoryClassifier:
    """Runs the classifier files of a bundle.

    ``CategoryClassifier(session, taxonomy)`` (no ``info``) is the legacy single-graph form: raw
    probabilities, OOD only for content-free text. ``from_files(bundle_dir, info)`` is the full form.
    """

    def __init__(self, session: ort.InferenceSession, taxonomy: Sequence[str], info: ClassifierInfo | None = None,
                 lm: CharLanguageModel | None = None, encoder: object | None = None) -> None:
        self.session = session
        self.taxonomy = tuple(taxonomy)
        self.info = info
        self.lm = lm
        self.encoder = encoder
        outputs = [o.name for o in session.get_outputs()]
        if "probabilities" not in outputs:
            raise ArtifactError(f"classifier.onnx has outputs {outputs}; expected 'probabilities' (export with zipmap off)")
        self._input = session.get_inputs()[0].name
        # arrays once, not per request (tuple -> array conversion was ~15% of a request)
        self._quantiles = {k: np.asarray(v, dtype=np.float64) for k, v in info.ood.quantiles.items()} if info else {}
        if info is not None and tuple(info.taxonomy) != self.taxonomy:
            raise ArtifactError(f"classifier taxonomy {list(info.taxonomy)} differs from the router's {list(self.taxonomy)}")
        if info is not None and info.kind == "encoder_linear" and encoder is None:
            raise ArtifactError("an encoder_linear classifier needs its sentence encoder")

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
        encoder = None
        if info.encoder is not None:
            from router.encoder import SentenceEncoder

            encoder = SentenceEncoder(files[info.encoder.model_file], files[info.encoder.tokenizer_file],
                                      max_length=info.encoder.max_length, threads=threads)
        return cls(make_session(files[info.model_file], threads=threads), info.taxonomy, info, lm, encoder)

    @property
    def row_separable(self) -> bool:
        """True when ``predict`` of many texts equals ``predict`` of each alone, bit for bit: the TF-IDF
        graph runs one row per call and the rest is row-wise arithmetic. The sentence encoder pads a
        batch to its longest text, which can move an embedding in the last bits."""
        return self.info is None or self.info.kind == "tfidf_linear"

    @property
    def max_chars(self) -> int:
        return self.info.max_chars if self.info is not None else LEGACY_MAX_CHARS

    def predict(self, texts: Sequence[str]) -> ClassifierOutput:
        prepared = [prepare_text(t, self.max_chars) for t in texts]
        probs = self._calibrated(prepared)
        empty = np.array([not has_content(t) for t in prepared], dtype=bool)
        if self.info is None or self.lm is None:
            score = empty.astype(np.float64)
            return ClassifierOutput(probs, score, empty)
        feats = ood_features(prepared, self.lm)
        score = np.where(empty, 1.0, combine(feats, self._quantiles))
        return ClassifierOutput(probs, score, (score >= self.info.ood.threshold) | empty)

    def predict_proba(self, texts: Sequence[str]) -> FloatArray:
        """(N, C) float32 calibrated probabilities in taxonomy order."""
        return self._calibrated([prepare_text(t, self.max_chars) for t in texts])

    def raw_proba(self, prepared: Sequence[str]) -> FloatArray:
        """Uncalibrated ONNX probabilities of already-prepared texts (N, C) float32."""
        n = len(prepared)
        if n == 0:
            return np.zeros((0, len(self.taxonomy)), dtype=np.float32)
        if self.info is not None and self.info.kind == "encoder_linear":
            emb = self.encoder.encode(prepared)  # type: ignore[attr-defined]
            (probs,) = self.session.run(["probabilities"], {self._input: emb})
        else:
            rows = [self.session.run(["probabilities"], {self._input: np.array([[t]], dtype=object)})[0]
                    for t in prepared]
            probs = np.concatenate(rows, axis=0)
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape[1] != len(self.taxonomy):
            raise ArtifactError(f"classifier.onnx returned {probs.shape[1]} classes for a taxonomy of {len(self.taxonomy)}")
        return probs

    def _calibrated(self, prepared: Sequence[str]) -> FloatArray:
        raw = self.raw_proba(prepared)
        return apply_temperature(raw, self.info.temperature) if self.info is not None else raw
