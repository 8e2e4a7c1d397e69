"""Online correction between retrains: a discounted per-(category, model) residual posterior.

For each (category, model) we keep discounted sums of the residual ``observed - predicted`` quality.
The correction added to the offline prediction is the posterior mean under a zero-mean prior worth
``prior_weight`` observations, clipped to ``±max_adjust`` -- limits the offline bundle sets, so the
serving process can nudge but never overrule the trained model.

We use the posterior *mean* (a discounted sliding estimate), not a Thompson *sample*: the decision
then stays a deterministic function of the state, so every logged propensity is still exact. Old
evidence decays by ``discount`` per update of the same cell, which tracks drift (non-stationarity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from router.policy import OnlineBounds
from router.types import FloatArray


@dataclass
class _Cell:
    weight: float = 0.0
    residual_sum: float = 0.0


@dataclass
class OnlineCorrection:
    bounds: OnlineBounds
    _cells: dict[tuple[str, str], _Cell] = field(default_factory=dict)

    def adjustment(self, category: str, models: Sequence[str]) -> FloatArray:
        out = np.zeros(len(models), dtype=np.float32)
        for i, m in enumerate(models):
            cell = self._cells.get((category, m))
            if cell is not None:
                mean = cell.residual_sum / (cell.weight + self.bounds.prior_weight)
                out[i] = np.clip(mean, -self.bounds.max_adjust, self.bounds.max_adjust)
        return out

    def observe(self, category: str, model: str, predicted: float, observed: float) -> None:
        if not (np.isfinite(predicted) and np.isfinite(observed)):
            return
        cell = self._cells.setdefault((category, model), _Cell())
        d = self.bounds.discount
        cell.weight = d * cell.weight + 1.0
        cell.residual_sum = d * cell.residual_sum + (observed - predicted)

    def snapshot(self) -> dict[str, float]:
        """Current corrections, for /healthz and metrics."""
        return {f"{c}/{m}": float(self.adjustment(c, [m])[0]) for c, m in self._cells}
