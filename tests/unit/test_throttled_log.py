"""router.throttled_log: the first failure of a kind is logged, then one line per period with the count."""

from __future__ import annotations

import logging

import pytest

from router.throttled_log import ThrottledLog


def test_repeats_are_counted_and_logged_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = ThrottledLog(logging.getLogger("turnout.test"), every_s=60.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="turnout.test"):
        for t in (0.0, 1.0, 59.0, 61.0):
            now[0] = t
            log.failed("classifier", "boom")
        log.failed("policy", "bang")  # another kind has its own first line
    assert [r.getMessage() for r in caplog.records] == [
        "classifier failed (1 so far): boom", "classifier failed (4 so far): boom", "policy failed (1 so far): bang"]
    assert log.counts == {"classifier": 4, "policy": 1}
