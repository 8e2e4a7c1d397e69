"""Hit verifier: a small learned model that accepts or rejects a semantic-cache candidate.

Input: ``router.cache_features.feature_matrix`` rows (pair features + one-hot category); output:
probability that the cached answer is interchangeable with a fresh one. Trained in
``training.cache_train`` (gradient-boosted trees), exported to ONNX, run here with onnxruntime. A
verifier that fails at run time rejects the candidate (fails closed to a miss, as
vllm-project/semantic-router PR #3162 does) and is counted in ``n_errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from router.cache_features import PAIR_FEATURES, feature_matrix
from router.onnx_session import make_session

log = logging.getLogger("turnout.cache")


class VerifierInfo(BaseModel):
    """How to run ``file``; stored in ``cache_policy.json`` as ``verifier``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = "cache_verifier.onnx"
    features: tuple[str, ...] = PAIR_FEATURES
    taxonomy: tuple[str, ...]
    input_name: str = "input"
    output_name: str = "probabilities"
    candidate_floor: float = Field(default=0.5, ge=-1, le=1)


class HitVerifier:
    def __init__(self, model: str | Path | bytes, info: VerifierInfo) -> None:
        if tuple(info.features) != PAIR_FEATURES:
            from router.errors import FeatureMismatchError

            raise FeatureMismatchError(f"cache verifier was trained on features {list(info.features)}; "
                                       f"this router computes {list(PAIR_FEATURES)}")
        self.info = info
        self.session = make_session(model)
        self.n_errors = 0
        self._index = {c: i for i, c in enumerate(info.taxonomy)}

    def features(self, query: str, cached: Sequence[str], cosines: Sequence[float], category: str) -> np.ndarray:
        return feature_matrix(query, cached, cosines, self._index.get(category, -1), len(self.info.taxonomy))

    def score(self, query: str, cached: Sequence[str], cosines: Sequence[float], category: str) -> np.ndarray:
        """(K,) acceptance probabilities; zeros (reject all) when the model fails."""
        if not cached:
            return np.zeros(0, dtype=np.float32)
        try:
            x = self.features(query, cached, cosines, category)
            (probs,) = self.session.run([self.info.output_name], {self.info.input_name: x})
            return np.asarray(probs, dtype=np.float32)[:, 1]
        except Exception as e:  # onnxruntime raises its own types; a broken verifier means "no hit"
            self.n_errors += 1
            log.warning("cache verifier failed (%s: %s); rejecting the candidates", type(e).__name__, e)
            return np.zeros(len(cached), dtype=np.float32)
