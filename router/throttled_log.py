"""A failure that repeats on every request is logged once, then at most once a minute with its count.

Swallowed failures (a broken classifier, a failing cache insert) must never be silent, and must never
write a line per request either: a broken model fails every request, and the log would drown.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

EVERY_S = 60.0


class ThrottledLog:
    """Counts failures per kind; logs the first of each kind, then one line per ``every_s`` with the count."""

    def __init__(self, logger: logging.Logger, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.every_s, self.clock = logger, every_s, clock
        self.counts: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}

    def failed(self, what: str, detail: str) -> int:
        """Count one failure of kind ``what``; returns how many so far."""
        n = self.counts[what] = self.counts.get(what, 0) + 1
        now = self.clock()
        if now - self._logged_at.get(what, -math.inf) >= self.every_s:
            self._logged_at[what] = now
            self.logger.warning("%s failed (%d so far): %s", what, n, detail)
        return n


__all__ = ["ThrottledLog"]
