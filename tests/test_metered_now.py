"""``MeteredBackend``'s plain-function fused call (``_now``): timed on every outcome, a ``StateError``
counted as an error, and each call traced while tracing is on."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.observability.metered import TRACED_CALLS, MeteredBackend, StateCall
from gateway.observability.metrics import GatewayMetrics
from gateway.state.base import StateError


class _Inner:
    """A backend whose fused call never waits: answers, or raises what ``fail`` holds."""

    kind = "memory"

    def __init__(self) -> None:
        self.fail: BaseException | None = None

    def sync_fused(self) -> Any:
        return self._run

    def _run(self, ops: list[Any]) -> list[Any]:
        if self.fail is not None:
            raise self.fail
        return [1] * len(ops)


def test_now_times_each_call_and_counts_state_errors_only() -> None:
    metrics, inner = GatewayMetrics(), _Inner()
    metered = MeteredBackend(inner, metrics)  # type: ignore[arg-type]
    metered.traced = True
    calls: list[StateCall] = []
    token = TRACED_CALLS.set(calls)
    try:
        assert metered.sync_fused()("budget_settle") == [1] * len("budget_settle")
        inner.fail = StateError("down")
        with pytest.raises(StateError):
            metered.run_fused_now("ratelimit_release")
        inner.fail = ValueError("a bug")
        with pytest.raises(ValueError):
            metered.run_fused_now("budget_settle")
    finally:
        TRACED_CALLS.reset(token)
    duration, errors = metrics.state_duration.labels("fused"), metrics.state_errors.labels("fused")
    assert sum(duration.counts) == 3 and errors.value == 1
    assert [(c.op, c.failed) for c in calls] == [
        ("fused:budget_settle", False), ("fused:ratelimit_release", True), ("fused:budget_settle", False)]
    assert all(c.duration_s >= 0 for c in calls)
