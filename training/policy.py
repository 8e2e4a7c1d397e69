"""Model policy, skeleton version: a per-model reward model (direct method) exported to ONNX.

For each model, a ridge regression of observed quality on the context features of the requests that
model served. The K regressions are stacked into one multi-output ``Ridge`` so ONNX gets a single
``LinearRegressor`` node (exact, ../shared/notes/dependencies.md §4.5): input ``features`` (N, d),
output ``variable`` (N, K) in ``models`` order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import Ridge

from router.errors import NotFittedError


class RewardModelTrainer:
    def __init__(self, models: Sequence[str], *, alpha: float = 1.0, min_samples: int = 20) -> None:
        self.models = tuple(models)
        self.alpha = alpha
        self.min_samples = min_samples

    def fit(self, features: np.ndarray, chosen: Sequence[str], quality: np.ndarray) -> RewardModelTrainer:
        x = np.asarray(features, dtype=np.float32)
        chosen_arr = np.asarray(chosen)
        q = np.asarray(quality, dtype=np.float64)
        coefs, intercepts = [], []
        for m in self.models:
            mask = chosen_arr == m
            if mask.sum() < self.min_samples:
                raise ValueError(f"model {m!r} has {int(mask.sum())} logged outcomes; need at least {self.min_samples}")
            r = Ridge(alpha=self.alpha).fit(x[mask], q[mask])
            coefs.append(r.coef_)
            intercepts.append(r.intercept_)
        stacked = Ridge(alpha=self.alpha)
        stacked.coef_ = np.vstack(coefs)
        stacked.intercept_ = np.asarray(intercepts)
        stacked.n_features_in_ = x.shape[1]
        self.model_, self.n_features_in_ = stacked, x.shape[1]
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self._fitted().predict(np.asarray(features, dtype=np.float32))

    def to_onnx(self) -> bytes:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType

        onx = to_onnx(self._fitted(), initial_types=[("features", FloatTensorType([None, self.n_features_in_]))])
        return onx.SerializeToString()

    def _fitted(self) -> Ridge:
        if not hasattr(self, "model_"):
            raise NotFittedError("RewardModelTrainer is not fitted yet; call fit(features, chosen, quality) first")
        return self.model_
