"""Off-policy evaluation: how would a target policy have done on traffic logged by another?

Inputs, for n logged rounds: reward ``r`` (n,), logging propensity of the logged action ``p0`` (n,),
target probability of the logged action ``pi`` (n,), and for DM/DR the reward model's prediction
for the logged action ``q_logged`` (n,) and its expectation under the target ``q_target`` (n,)
(= sum_a pi(a|x) q(x, a)). With importance weight ``w = pi / p0``::

    IPS   = mean(w r)
    SNIPS = sum(w r) / sum(w)
    DM    = mean(q_target)
    DR    = mean(q_target + w (r - q_logged))
    SwitchDR = mean(q_target + 1[w <= tau] w (r - q_logged))

Each estimator is a frozen dataclass with a ``name``; ``estimate_interval`` is a seeded percentile
bootstrap. Composition of per-sample terms, not inheritance (../shared/STYLE.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class OPEBatch:
    reward: np.ndarray
    propensity: np.ndarray
    target_prob: np.ndarray
    q_logged: np.ndarray
    q_target: np.ndarray

    def __post_init__(self) -> None:
        n = self.reward.shape[0]
        for name in ("propensity", "target_prob", "q_logged", "q_target"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"OPEBatch.{name} has shape {getattr(self, name).shape}; expected ({n},)")
        if np.any(self.propensity <= 0):
            raise ValueError("OPEBatch.propensity must be > 0 for every logged round")

    @property
    def weight(self) -> np.ndarray:
        return self.target_prob / self.propensity

    def take(self, idx: np.ndarray) -> OPEBatch:
        return OPEBatch(*(getattr(self, f)[idx] for f in ("reward", "propensity", "target_prob", "q_logged", "q_target")))


def ipw_terms(b: OPEBatch) -> np.ndarray:
    return b.weight * b.reward


def dr_terms(b: OPEBatch) -> np.ndarray:
    return b.q_target + b.weight * (b.reward - b.q_logged)


@dataclass(frozen=True, slots=True)
class InverseProbabilityWeighting:
    name: str = "ips"

    def estimate(self, b: OPEBatch) -> float:
        return float(np.mean(ipw_terms(b)))


@dataclass(frozen=True, slots=True)
class SelfNormalizedIPS:
    name: str = "snips"

    def estimate(self, b: OPEBatch) -> float:
        w = b.weight
        return float(np.sum(w * b.reward) / max(float(np.sum(w)), 1e-12))


@dataclass(frozen=True, slots=True)
class DirectMethod:
    name: str = "dm"

    def estimate(self, b: OPEBatch) -> float:
        return float(np.mean(b.q_target))


@dataclass(frozen=True, slots=True)
class DoublyRobust:
    name: str = "dr"

    def estimate(self, b: OPEBatch) -> float:
        return float(np.mean(dr_terms(b)))


@dataclass(frozen=True, slots=True)
class SwitchDoublyRobust:
    """DR where the importance weight is small enough, DM where it exceeds ``tau`` (Wang et al. 2017):
    ``mean(q_target + 1[w <= tau] * w * (r - q_logged))``. Trades a little bias for much less variance
    when the target policy puts mass on actions the logger rarely took."""

    tau: float = 20.0  # above 1/propensity of uniform logging over up to 20 models: plain DR there
    name: str = "switch_dr"

    def estimate(self, b: OPEBatch) -> float:
        w = b.weight
        return float(np.mean(b.q_target + np.where(w <= self.tau, w * (b.reward - b.q_logged), 0.0)))


Estimator = InverseProbabilityWeighting | SelfNormalizedIPS | DirectMethod | DoublyRobust | SwitchDoublyRobust
DEFAULT_ESTIMATORS: tuple[Estimator, ...] = (InverseProbabilityWeighting(), SelfNormalizedIPS(), DirectMethod(),
                                             DoublyRobust(), SwitchDoublyRobust())


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float
    low: float
    high: float


def estimate_interval(est: Estimator, b: OPEBatch, *, alpha: float = 0.05, n_bootstrap: int = 200,
                      seed: int = 0) -> Estimate:
    rng = np.random.default_rng(seed)
    n = b.reward.shape[0]
    samples = [est.estimate(b.take(rng.integers(0, n, n))) for _ in range(n_bootstrap)]
    low, high = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Estimate(est.estimate(b), float(low), float(high))


def evaluate(b: OPEBatch, estimators: tuple[Estimator, ...] = DEFAULT_ESTIMATORS, **kw: float) -> dict[str, Estimate]:
    return {e.name: estimate_interval(e, b, **kw) for e in estimators}  # type: ignore[arg-type]
