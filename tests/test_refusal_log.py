"""Refused connections are logged in summary: a burst of thousands is a few lines, not one per connection.

Was (issue 14): 19,990 partial-header connections left nothing in the log (the cap's refusals were
only counted); logging each one instead would flood it. Now the first refusal of a burst logs at
once and the rest in one line per ``LOG_EVERY_S``, with counts by reason. And a cap the open-file
limit cannot hold is lowered to fit, with a warning: past that limit ``accept`` failed on every
listener, the probe port included (bench_connections.py: 34 of 50 probes failed on both ports).
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


def test_a_connection_cap_over_the_open_file_limit_is_lowered_to_fit_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    import resource

    from gateway.http.runner import FD_RESERVE, connection_cap

    caplog.set_level(logging.WARNING, logger="gateway")
    assert connection_cap(100) == 100
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # raised to the hard limit by the call above
    if limit == resource.RLIM_INFINITY:
        pytest.skip("no open-file limit here")
    quiet = len(caplog.records)
    assert connection_cap(limit * 2) == limit - FD_RESERVE
    assert len(caplog.records) == quiet + 1 and "does not fit the open-file limit" in caplog.records[-1].getMessage()
