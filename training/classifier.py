"""Category classifier: TF-IDF (word 1-2 grams) + logistic regression, exported to one ONNX graph.

Labels are encoded as taxonomy indices so ONNX probability column j is ``taxonomy[j]``. The
tokenisation options follow the verified recipe in ../shared/notes/dependencies.md §4.1/§5: sklearn's
default token pattern with an equivalent re2 ``tokenexp`` and ``locale=C.UTF-8``, no ``sublinear_tf``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from router.errors import NotFittedError

ONNX_TOKENEXP = r"[\p{L}\p{N}_]{2,}"
SKLEARN_TOKEN_PATTERN = r"(?u)\b\w\w+\b"


class CategoryTrainer:
    def __init__(self, taxonomy: Sequence[str], *, c: float = 10.0, max_features: int = 50_000, seed: int = 0) -> None:
        self.taxonomy = tuple(taxonomy)
        self.c = c
        self.max_features = max_features
        self.seed = seed

    def fit(self, texts: Sequence[str], categories: Sequence[str]) -> CategoryTrainer:
        unknown = sorted(set(categories) - set(self.taxonomy))
        if unknown:
            raise ValueError(f"labels {unknown} are not in the taxonomy {list(self.taxonomy)}")
        absent = [c for c in self.taxonomy if c not in set(categories)]
        if absent:
            raise ValueError(f"no training examples for categor{'y' if len(absent) == 1 else 'ies'} {absent}")
        y = np.array([self.taxonomy.index(c) for c in categories])
        self.pipeline_ = Pipeline([
            ("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=self.max_features,
                                      token_pattern=SKLEARN_TOKEN_PATTERN)),
            ("clf", LogisticRegression(C=self.c, max_iter=2000, random_state=self.seed)),
        ]).fit(list(texts), y)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self._fitted().predict_proba(list(texts))

    def to_onnx(self) -> bytes:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import StringTensorType

        onx = to_onnx(self._fitted(), initial_types=[("text", StringTensorType([None, 1]))],
                      options={TfidfVectorizer: {"locale": "C.UTF-8", "tokenexp": ONNX_TOKENEXP},
                               LogisticRegression: {"zipmap": False}})
        return onx.SerializeToString()

    def _fitted(self) -> Pipeline:
        if not hasattr(self, "pipeline_"):
            raise NotFittedError("CategoryTrainer is not fitted yet; call fit(texts, categories) first")
        return self.pipeline_
