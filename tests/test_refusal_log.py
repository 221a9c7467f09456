"""Refused connections are logged in summary: a burst of thousands is a few lines, not one per connection.

Was (issue 14): 19,990 partial-header connections left nothing in the log (the cap's refusals were
only counted); logging each one instead would flood it. Now the first refusal of a burst logs at
once and the rest in one line per ``LOG_EVERY_S``, with counts by reason. And a cap the open-file
limit cannot hold is warned about at start (past that limit ``accept`` fails on every listener).
"""

from __future__ import annotations

import logging

import pytest

from gateway.clock import FakeClock
from gateway.http.guard import LOG_EVERY_S, ConnectionGuard
from gateway.policy.model import ServerPolicy


def test_a_burst_of_refusals_is_two_log_lines_with_counts(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    guard = ConnectionGuard(ServerPolicy(max_connections=2), now=clock.monotonic)
    caplog.set_level(logging.WARNING, logger="gateway.http")
    assert guard.admit("a") and guard.admit("b")
    for _ in range(1000):
        assert not guard.admit("c")
    for _ in range(5):
        guard.refused("header_timeout")
        guard.refused("idle_timeout")  # routine: counted only
    assert len(caplog.records) == 1 and "max_connections 1" in caplog.records[0].getMessage()
    clock.advance(LOG_EVERY_S)
    assert not guard.admit("c")
    assert len(caplog.records) == 2
    assert "header_timeout 5, max_connections 1000" in caplog.records[1].getMessage()
    assert guard.counts == {"max_connections": 1001, "header_timeout": 5, "idle_timeout": 5}


def test_a_connection_cap_over_the_open_file_limit_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    import resource

    from gateway.http.runner import raise_fd_limit

    caplog.set_level(logging.WARNING, logger="gateway")
    limit = raise_fd_limit(4096)
    if limit == resource.RLIM_INFINITY:
        pytest.skip("no open-file limit here")
    assert limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    quiet = len(caplog.records)
    raise_fd_limit(limit + 1)
    assert len(caplog.records) == quiet + 1 and "does not fit the open-file limit" in caplog.records[-1].getMessage()
