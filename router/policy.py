"""Model choice: predicted quality, cost and latency heads + a run-time preference + exploration.

``policy.onnx`` predicts three heads per candidate model. The utility of model m is::

    u_m = w_q * quality_m  -  w_c * cost_m / ref_cost  -  w_l * latency_m / ref_latency

with ``ref_cost``/``ref_latency`` fixed at training (the costliest/slowest model's mean), so a weight
means the same thing for every request and can be changed per request without retraining: cost
weight 1 = "give up one quality point to avoid the costliest model's average bill".

Exploration draws the action from a distribution that is a deterministic function of the utilities,
so the logged propensity is exact: epsilon-greedy (``epsilon/K`` everywhere, the rest on the argmax)
or softmax (``exp(u/T)``, normalised).
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnxruntime as ort
from pydantic import Field

from router.config import Exploration, Preference, _Frozen
from router.errors import ArtifactError
from router.onnx_session import bound_runner
from router.types import FloatArray

HEADS = ("quality", "cost", "latency")


class OnlineBounds(_Frozen):
    """Limits the offline model sets on the serving-time correction (``router.online``)."""

    max_adjust: float = Field(default=0.1, ge=0, le=1)
    discount: float = Field(default=0.98, gt=0, le=1)
    prior_weight: float = Field(default=10.0, ge=0)


class PolicyInfo(_Frozen):
    """How to read ``policy.onnx`` (stored as ``manifest.policy``).

    ``layout="model_feature"``: input ``features`` is (K, d + K) -- the context repeated per candidate
    with a one-hot model id appended; each head output is (K, 1). ``layout="per_arm"``: input (1, d);
    each head output is (1, K). Heads in ``log_heads`` are predicted in log space.
    """

    kind: str
    variant: str = "dm"
    layout: Literal["model_feature", "per_arm"]
    models: tuple[str, ...]
    n_context: int = Field(gt=0)
    log_heads: tuple[str, ...] = ("cost", "latency")
    ref_cost_usd: float = Field(gt=0)
    ref_latency_ms: float = Field(gt=0)
    online: OnlineBounds = OnlineBounds()


@dataclass(frozen=True, slots=True)
class HeadPredictions:
    quality: FloatArray
    cost_usd: FloatArray
    latency_ms: FloatArray

    def take(self, idx: Sequence[int]) -> HeadPredictions:
        i = np.asarray(idx, dtype=np.int64)
        return HeadPredictions(self.quality[i], self.cost_usd[i], self.latency_ms[i])


class PolicyScorer:
    """Runs ``policy.onnx`` for one context and returns the three heads for every catalogue model."""

    def __init__(self, session: ort.InferenceSession, info: PolicyInfo) -> None:
        self.session = session
        self.info = info
        outputs = [o.name for o in session.get_outputs()]
        missing = [h for h in HEADS if h not in outputs]
        if missing:
            raise ArtifactError(f"policy.onnx has outputs {outputs}; missing head(s) {missing}")
        k = len(info.models)
        self._eye = np.eye(k, dtype=np.float32)
        self._heads = list(HEADS)
        # one request's ONNX input with the one-hot model ids already in place; predict copies it
        self._template = np.zeros((k, info.n_context + k), dtype=np.float32)
        self._template[:, info.n_context:] = self._eye
        self._log_cost, self._log_latency = "cost" in info.log_heads, "latency" in info.log_heads
        self._local = threading.local()  # one _BoundRun per thread (its buffers are that thread's)

    @property
    def row_separable(self) -> bool:
        """True when row i of ``predict_batch`` is bit-identical to ``predict`` of row i alone: tree
        ensembles sum per row in a fixed tree order. Linear graphs (LinUCB's MatMul/Einsum) may take
        other GEMM kernels for other batch sizes, so they are not batched where identity matters."""
        return self.info.kind == "gbdt" and self.info.layout == "model_feature"

    def predict_batch(self, features: FloatArray) -> HeadPredictions:
        """``features`` (N, d) -> heads of shape (N, K)."""
        d = self.info.n_context
        x = np.asarray(features, dtype=np.float32).reshape(-1, d)
        n, k = x.shape[0], len(self.info.models)
        if self.info.layout == "model_feature":
            # [context repeated K times | one-hot model id]: filled in place (concatenate+repeat+tile cost
            # more than the ONNX call's input handling for one request)
            rows = np.empty((n, k, d + k), dtype=np.float32)
            rows[:, :, :d] = x[:, None, :]
            rows[:, :, d:] = self._eye
            outs = self.session.run(self._heads, {"features": rows.reshape(n * k, d + k)})
            q, c, l = (np.asarray(o, dtype=np.float32).reshape(n, k) for o in outs)
        else:
            outs = self.session.run(self._heads, {"features": x})
            q, c, l = (np.asarray(o, dtype=np.float32).reshape(n, k) for o in outs)
        if "cost" in self.info.log_heads:
            c = np.exp(c)
        if "latency" in self.info.log_heads:
            l = np.exp(l)
        return HeadPredictions(q, c, l)

    def predict(self, features: FloatArray) -> HeadPredictions:
        """One context ``(d,)`` -> heads of shape (K,); the same numbers as row 0 of ``predict_batch``
        (same ONNX rows, same float32 ``exp``) with a few numpy calls instead of ~20."""
        if self.info.layout != "model_feature":
            p = self.predict_batch(features)
            return HeadPredictions(p.quality[0], p.cost_usd[0], p.latency_ms[0])
        bound = getattr(self._local, "run", None)
        if bound is None:
            bound = self._local.run = _BoundRun.make(self)
        if bound is False:
            rows = self._template.copy()
            rows[:, :self.info.n_context] = features
            q, c, l = self.session.run(self._heads, {"features": rows})
            q, c, l = q.reshape(-1), c.reshape(-1), l.reshape(-1)
            return HeadPredictions(q, np.exp(c) if self._log_cost else c, np.exp(l) if self._log_latency else l)
        q, c, l = bound(features)  # c and l are the bound buffers: exponentiate or copy them now
        return HeadPredictions(q, np.exp(c) if self._log_cost else c.copy(), np.exp(l) if self._log_latency else l.copy())


class _BoundRun:
    """``PolicyScorer.predict``'s ONNX call with I/O binding (as ``router.replica.BoundScorer``): one
    preallocated input (the one-hot template, context columns overwritten per call) and one output
    buffer per head, bound once; the run goes through ``router.onnx_session.bound_runner``. Saves
    ~15 µs of per-call input/output conversion. Not thread-safe: one per thread.
    ``make`` returns False (the caller keeps ``session.run``) when binding is unavailable or a trial
    run does not reproduce ``session.run`` bit for bit."""

    __slots__ = ("x", "out", "n_context", "_run", "_args", "_binding")

    def __init__(self, scorer: PolicyScorer) -> None:
        k = len(scorer.info.models)
        self.n_context = scorer.info.n_context
        self.x = scorer._template.copy()
        self.out = [np.empty(k, dtype=np.float32) for _ in HEADS]
        session = scorer.session
        binding = session.io_binding()
        binding.bind_input("features", "cpu", 0, np.float32, list(self.x.shape), self.x.ctypes.data)
        for name, buf in zip(HEADS, self.out):
            binding.bind_output(name, "cpu", 0, np.float32, [k, 1], buf.ctypes.data)
        self._binding = binding
        self._run, self._args = bound_runner(session, binding)

    @classmethod
    def make(cls, scorer: PolicyScorer) -> _BoundRun | bool:
        try:
            bound = cls(scorer)
            probe = np.linspace(-1.0, 2.0, scorer.info.n_context, dtype=np.float32)
            got = [a.copy() for a in bound(probe)]
            rows = scorer._template.copy()
            rows[:, :scorer.info.n_context] = probe
            want = scorer.session.run(list(HEADS), {"features": rows})
            if all(g.tobytes() == w.reshape(-1).tobytes() for g, w in zip(got, want)):
                return bound
        except Exception:  # binding is an optimisation: session.run still works
            pass
        return False

    def __call__(self, features: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(quality, cost, latency) (K,) for one context; quality is a copy, the other two are the
        bound buffers (the caller exponentiates or copies them before the next call)."""
        self.x[:, :self.n_context] = features
        self._run(*self._args)
        q, c, l = self.out
        return q.copy(), c, l


def utilities(heads: HeadPredictions, pref: Preference, ref_cost_usd: float, ref_latency_ms: float) -> FloatArray:
    return (pref.quality * heads.quality - pref.cost * heads.cost_usd / ref_cost_usd
            - pref.latency * heads.latency_ms / ref_latency_ms).astype(np.float32)


def utilities_row(quality: Sequence[float], cost_usd: Sequence[float], latency_ms: Sequence[float], pref: Preference,
                  ref_cost_usd: float, ref_latency_ms: float) -> list[float]:
    """``utilities`` on Python floats holding float32 values, with numpy's float32 arithmetic: each
    operation is done in float64 and rounded to float32 (exact: float64 carries more than 2 * 24 + 2
    bits, so rounding twice equals rounding once), and Python scalars are cast to float32 first, as
    numpy does for a float32 array. A unit test pins it to ``utilities`` bit for bit."""
    wq, wc, wl, rc, rl = _f32([pref.quality, pref.cost, pref.latency, ref_cost_usd, ref_latency_ms])
    a = _f32([wq * q for q in quality])
    b = _f32([x / rc for x in _f32([wc * c for c in cost_usd])])
    u = _f32([x - y for x, y in zip(a, b)])
    d = _f32([x / rl for x in _f32([wl * v for v in latency_ms])])
    return _f32([x - y for x, y in zip(u, d)])


def _f32(values: Iterable[float]) -> list[float]:
    """Round each value to float32 (array('f') converts like numpy's astype: round to nearest even)."""
    return array("f", values).tolist()


def epsilon_greedy_row(utility: Sequence[float], epsilon: float) -> list[float]:
    """``epsilon_greedy_probs`` on a list (finite utilities): the same float64 numbers."""
    k = len(utility)
    best = max(range(k), key=utility.__getitem__)  # first index of the maximum, like np.argmax
    probs = [epsilon / k] * k
    probs[best] += 1.0 - epsilon
    return probs


def epsilon_greedy_probs(utility: FloatArray, epsilon: float) -> FloatArray:
    """``epsilon/K`` everywhere plus ``1 - epsilon`` on the argmax (first index on ties, so the
    distribution is a deterministic function of the utilities)."""
    k = utility.shape[0]
    probs = np.full(k, epsilon / k, dtype=np.float64)
    probs[int(np.argmax(utility))] += 1.0 - epsilon
    return probs


def softmax_probs(utility: FloatArray, temperature: float) -> FloatArray:
    z = (np.asarray(utility, dtype=np.float64) - float(np.max(utility))) / temperature
    e = np.exp(z)
    return e / e.sum()


def action_probs(utility: FloatArray, exploration: Exploration) -> FloatArray:
    if exploration.kind == "softmax":
        return softmax_probs(utility, exploration.temperature)
    return epsilon_greedy_probs(utility, exploration.epsilon)


@dataclass(frozen=True, slots=True)
class Choice:
    model: str
    candidates: tuple[str, ...]
    action_probs: tuple[float, ...]
    propensity: float
    utilities: tuple[float, ...]


def choose(candidates: Sequence[str], utility: FloatArray | Sequence[float], exploration: Exploration,
           rng: np.random.Generator) -> Choice:
    """``utility``: float32 array, or a list of float32 values (``utilities_row``): the same choice."""
    u = utility.tolist() if isinstance(utility, np.ndarray) else list(utility)
    if exploration.kind == "epsilon_greedy" and all(math.isfinite(x) for x in u):
        p = epsilon_greedy_row(u, exploration.epsilon)
        probs = None
    else:
        probs = action_probs(np.asarray(utility, dtype=np.float32), exploration)
        p = probs.tolist()
    idx = draw(rng, p, probs)
    return Choice(
        model=candidates[idx],
        candidates=tuple(candidates),
        action_probs=tuple(p),
        propensity=p[idx],
        utilities=tuple(u),
    )


_P_ATOL = float(np.sqrt(np.finfo(np.float64).eps))


def draw(rng: np.random.Generator, p: Sequence[float], probs: FloatArray | None = None) -> int:
    """``int(rng.choice(len(p), p=p))`` -- the same index from the same single ``rng.random()`` draw
    (numpy: ``cdf = cumsum(p); cdf /= cdf[-1]; cdf.searchsorted(u, side="right")``) in ~1/10 of the
    time for a handful of candidates; a unit test pins the equality. Invalid ``p`` (negative, NaN,
    not summing to 1) goes to ``rng.choice`` itself, which raises numpy's own error."""
    if not all(x >= 0.0 for x in p) or abs(math.fsum(p) - 1.0) > _P_ATOL:
        return int(rng.choice(len(p), p=np.asarray(p if probs is None else probs, dtype=np.float64)))
    u = rng.random()
    total, cdf = 0.0, []
    for x in p:
        total += x
        cdf.append(total)
    for i, c in enumerate(cdf):
        if c / total > u:
            return i
    return len(cdf) - 1  # unreachable: c / total == 1.0 > u for the last entry
