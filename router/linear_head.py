"""The ``tfidf_sparse_linear`` classifier head evaluated with numpy, its weights read from ``classifier.onnx``.

The head is ``softmax(values @ weights[indices] + bias)`` (training.classifier.sparse_linear_head): a
gather and a weighted sum of a few hundred rows. One onnxruntime run of it cost ~20-60 µs, mostly fixed
per-call overhead; the same arithmetic in numpy is a handful of vector operations for a whole batch of
texts. The weights are the ONNX file's own initializers, so serving still needs only the bundle's ONNX
files + manifest; a graph of any other shape is not recognised (``from_onnx`` returns None) and the
classifier keeps running it with onnxruntime.

Numbers: logits are float64 like the graph's; only the summation order differs from onnxruntime's
MatMul and Softmax (a few float64 ulps: tests pin |Δp| <= 1e-12 against the ONNX session and 1e-10
against scikit-learn; the calibrated float32 probabilities serving uses come out identical on the
test corpora). Each row's logits are one ``values @ weights[indices]`` of that row alone, so
``probabilities`` of a batch equals, row for row and bit for bit, the rows computed one at a time.
"""

from __future__ import annotations

import math

import numpy as np

from router.tfidf import SparseRows

_PATTERN = (("Unsqueeze", ("values", "axis0"), ("row",)), ("Gather", ("weights", "indices"), ("rows",)),
            ("MatMul", ("row", "rows"), ("dot",)), ("Add", ("dot", "bias"), ("logits",)),
            ("Softmax", ("logits",), ("probabilities",)))


class SparseLinearHead:
    """``weights`` (F, C) float64 and ``bias`` (C,) float64 of the sparse head graph."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray) -> None:
        self.weights = np.ascontiguousarray(weights, dtype=np.float64)
        self.bias = np.ascontiguousarray(bias, dtype=np.float64)
        if self.weights.ndim != 2 or self.bias.shape != (self.weights.shape[1],):
            raise ValueError(f"head weights {self.weights.shape} and bias {self.bias.shape} do not fit")
        self._bias_list = self.bias.tolist()

    @classmethod
    def from_onnx(cls, model: bytes) -> SparseLinearHead | None:
        """The head of a graph written by ``sparse_linear_head`` (node for node), else None."""
        import onnx
        from onnx import numpy_helper

        try:
            m = onnx.load_from_string(model)
        except Exception:  # not parseable here: onnxruntime will say what is wrong with it
            return None
        g = m.graph
        nodes = tuple((n.op_type, tuple(n.input), tuple(n.output)) for n in g.node)
        if nodes != _PATTERN or [i.name for i in g.input] != ["indices", "values"]:
            return None
        attrs = {(n.op_type, a.name): onnx.helper.get_attribute_value(a) for n in g.node for a in n.attribute}
        if attrs.get(("Gather", "axis"), 0) != 0 or attrs.get(("Softmax", "axis"), -1) not in (-1, 1):
            return None
        init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        w, b, axis0 = init.get("weights"), init.get("bias"), init.get("axis0")
        if w is None or b is None or axis0 is None or axis0.tolist() != [0]:
            return None
        if w.dtype != np.float64 or b.dtype != np.float64 or w.ndim != 2 or b.shape != (w.shape[1],):
            return None
        return cls(w, b)

    @property
    def n_features(self) -> int:
        return int(self.weights.shape[0])

    def logits(self, rows: SparseRows) -> list[list[float]]:
        """One list of C floats per row: ``values @ weights[indices] + bias`` (float64), each row by
        ``logits_row`` (so a row's floats do not depend on the batch it came in)."""
        bounds = rows.indptr.tolist()
        gathered = self.weights.take(rows.indices, axis=0)  # = weights[indices]; take copies rows faster
        out = []
        for a, b in zip(bounds, bounds[1:]):
            out.append((rows.values[a:b] @ gathered[a:b] + self.bias).tolist() if b > a else list(self._bias_list))
        return out

    def logits_row(self, indices: np.ndarray, values: np.ndarray) -> list[float]:
        """``logits`` of one row."""
        if not indices.size:
            return list(self._bias_list)
        return (values @ self.weights.take(indices, axis=0) + self.bias).tolist()  # type: ignore[no-any-return]

    def probabilities(self, rows: SparseRows) -> list[list[float]]:
        """Softmax of ``logits`` per row, on Python floats (C numbers: numpy's per-call cost would dominate)."""
        return [softmax_row(z) for z in self.logits(rows)]


def softmax_row(z: list[float]) -> list[float]:
    """exp(z - max z) / sum; NaN or inf in ``z`` give a non-finite row (the router falls back on it)."""
    top = max(z)
    if not math.isfinite(top):
        return [math.nan] * len(z)
    e = [math.exp(v - top) for v in z]
    total = 0.0
    for v in e:
        total += v
    return [v / total for v in e]
