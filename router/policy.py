"""Model choice: predicted quality from ``policy.onnx``, a run-time preference, epsilon-greedy.

The utility of model m for a request is::

    u_m = w_q * q_m  -  w_c * cost_m / max_k cost_k  -  w_l * latency_m / max_k latency_k

over the allowed candidates only; costs and latencies are normalised per request so the weights are
unit-free and can be changed at run time without retraining. Exploration is epsilon-greedy: every
candidate gets ``epsilon / K`` and the best gets the rest, so each logged propensity is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from router.config import ModelSpec, Preference
from router.errors import ArtifactError
from router.types import FloatArray


@dataclass(frozen=True, slots=True)
class Choice:
    model: str
    candidates: tuple[str, ...]
    action_probs: tuple[float, ...]
    propensity: float
    utilities: tuple[float, ...]


class RewardModel:
    """Runs ``policy.onnx`` (input ``features``: float32 (N, d); output (N, K) predicted quality)."""

    def __init__(self, session: ort.InferenceSession, models: Sequence[str]) -> None:
        self.session = session
        self.models = tuple(models)
        self._output = session.get_outputs()[0].name
        width = session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != len(self.models):
            raise ArtifactError(f"policy.onnx predicts {width} models; the manifest lists {len(self.models)}")

    def predict(self, features: FloatArray) -> FloatArray:
        x = np.asarray(features, dtype=np.float32).reshape(-1, features.shape[-1])
        (q,) = self.session.run([self._output], {"features": x})
        return np.asarray(q, dtype=np.float32).reshape(x.shape[0], len(self.models))


def estimate_cost_usd(spec: ModelSpec, input_tokens: int, output_tokens: float) -> float:
    return (spec.price_in_per_1k * input_tokens + spec.price_out_per_1k * output_tokens) / 1000.0


def utilities(quality: FloatArray, cost_usd: FloatArray, latency_ms: FloatArray, pref: Preference) -> FloatArray:
    cost_rel = cost_usd / max(float(cost_usd.max()), 1e-12)
    lat_rel = latency_ms / max(float(latency_ms.max()), 1e-12)
    return (pref.quality * quality - pref.cost * cost_rel - pref.latency * lat_rel).astype(np.float32)


def epsilon_greedy_probs(utility: FloatArray, epsilon: float) -> FloatArray:
    """Probability of each candidate: ``epsilon/K`` everywhere plus ``1 - epsilon`` on the argmax
    (first index on ties, so the distribution is a deterministic function of the utilities)."""
    k = utility.shape[0]
    probs = np.full(k, epsilon / k, dtype=np.float64)
    probs[int(np.argmax(utility))] += 1.0 - epsilon
    return probs


def choose(candidates: Sequence[str], utility: FloatArray, epsilon: float, rng: np.random.Generator) -> Choice:
    probs = epsilon_greedy_probs(utility, epsilon)
    idx = int(rng.choice(len(candidates), p=probs))
    return Choice(
        model=candidates[idx],
        candidates=tuple(candidates),
        action_probs=tuple(float(p) for p in probs),
        propensity=float(probs[idx]),
        utilities=tuple(float(u) for u in utility),
    )
