"""Category classifier at serving time: ONNX text pipeline -> probabilities in taxonomy order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from router.errors import ArtifactError
from router.types import FloatArray


class CategoryClassifier:
    """Runs ``classifier.onnx`` (input ``text``: string (N, 1); output ``probabilities``: (N, C)).

    Column j of the output is ``taxonomy[j]``: the trainer encodes labels by taxonomy index.
    """

    def __init__(self, session: ort.InferenceSession, taxonomy: Sequence[str]) -> None:
        self.session = session
        self.taxonomy = tuple(taxonomy)
        outputs = [o.name for o in session.get_outputs()]
        if "probabilities" not in outputs:
            raise ArtifactError(f"classifier.onnx has outputs {outputs}; expected 'probabilities' (export with zipmap off)")

    def predict_proba(self, texts: Sequence[str]) -> FloatArray:
        if not texts:
            return np.zeros((0, len(self.taxonomy)), dtype=np.float32)
        x = np.asarray(list(texts), dtype=object).reshape(-1, 1)
        (probs,) = self.session.run(["probabilities"], {"text": x})
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape[1] != len(self.taxonomy):
            raise ArtifactError(f"classifier.onnx returned {probs.shape[1]} classes for a taxonomy of {len(self.taxonomy)}")
        return probs
