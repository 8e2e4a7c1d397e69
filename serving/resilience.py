"""Failure handling for model calls: retry backoff with jitter, a circuit breaker per model
upstream, and the failover order taken from the policy's ranking.

Pure Python (no Ray, no httpx) so every rule is unit-tested with a fake clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

from pydantic import Field

from router.config import _Frozen
from router.decision import Decision


class RetryPolicy(_Frozen):
    """Retries of one upstream call (connect errors, 5xx, 429) with full-jitter exponential backoff."""

    attempts: int = Field(default=3, ge=1, le=10, description="tries per upstream call, first included")
    base_backoff_s: float = Field(default=0.1, gt=0)
    max_backoff_s: float = Field(default=2.0, gt=0)

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Sleep before retry number ``attempt`` (1-based): uniform(0, min(max, base * 2**(attempt-1)))."""
        cap = min(self.max_backoff_s, self.base_backoff_s * 2 ** max(attempt - 1, 0))
        return (rng or random).uniform(0.0, cap)


class BreakerConfig(_Frozen):
    failure_threshold: int = Field(default=5, ge=1, description="consecutive failures that open the circuit")
    reset_after_s: float = Field(default=10.0, gt=0, description="open -> half-open after this long")


class FailoverConfig(_Frozen):
    """Gateway side: how long a request may take across all models it tries, and how often one model
    is retried (a dead replica, backpressure) before the next model in the ranking."""

    deadline_s: float = Field(default=30.0, gt=0, description="total budget of a request across failovers")
    attempts_per_model: int = Field(default=2, ge=1, le=5)
    max_models: int = Field(default=3, ge=1, description="models tried at most (decision's model first)")
    breaker: BreakerConfig = BreakerConfig()


class CircuitBreaker:
    """closed -> (``failure_threshold`` consecutive failures) -> open -> (``reset_after_s``) ->
    half-open: one trial call; success closes, failure re-opens."""

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_out = False
        self._trial_at = 0.0

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.config.reset_after_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        now = self.clock()
        # one trial at a time; a trial that never reported (cancelled, lost) expires after reset_after_s
        if state == "half_open" and (not self._trial_out or now - self._trial_at >= self.config.reset_after_s):
            self._trial_out, self._trial_at = True, now
            return True
        return False

    def release(self) -> None:
        """The call ended without a verdict on the upstream's health (client cancelled, client-caused
        4xx): free the half-open trial slot without closing or re-opening the circuit."""
        self._trial_out = False

    def record_success(self) -> None:
        self.failures, self.opened_at, self._trial_out = 0, None, False

    def record_failure(self) -> None:
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.config.failure_threshold:
            self.opened_at, self._trial_out = self.clock(), False


def failover_order(decision: Decision, max_models: int) -> list[str]:
    """The decision's model, then the other candidates by action probability, then predicted quality.

    Pinned and fallback decisions have a single candidate: no failover to another model."""
    rank = {m: (p, decision.predicted_quality.get(m, 0.0)) for m, p in zip(decision.candidates, decision.action_probs)}
    others = sorted((m for m in decision.candidates if m != decision.model), key=lambda m: rank[m], reverse=True)
    return [decision.model, *others][:max_models]
