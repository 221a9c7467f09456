"""Observe stages: a request in flight from its first phase, and recorded once when it completes.

``InFlightStage`` (first in the stage list) counts a request in flight from its first phase;
``ObserveStage`` (last, so every other stage's ``complete`` has settled cost and outcome before it
reads them) records everything once per request through the shared ``Observability``: counters and
histograms, one JSON access-log line and the audit/review record. The small record feedback needs is
kept by ``FeedbackRecordStage`` (``gateway.stages.feedback_record``), before the state call of
``complete`` it may ride.
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway.context import RequestContext
from gateway.observability.hub import Observability
from gateway.observability.recorder import access_facts, settled_cost
from gateway.pipeline import Stage, Verdict
from gateway.policy.model import Policy


class InFlightStage(Stage):
    """First stage: a request is in flight from its first phase until its ``complete``."""

    name = "in_flight"

    def __init__(self, obs: Observability) -> None:
        self.gauge = obs.metrics.in_flight.labels()  # the unlabelled child: one call less per phase

    def authenticate(self, ctx: RequestContext) -> Verdict:
        self.gauge.value += 1.0  # (a plain gauge child: ``inc()`` is this add, here without its call)
        ctx.in_flight = True
        return None

    def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        if ctx.in_flight:
            ctx.in_flight = False
            self.gauge.value -= 1.0


class ObserveStage(Stage):
    """Last stage: records every finished request once (metrics, access log, audit)."""

    name = "observe"

    def __init__(self, obs: Observability) -> None:
        self.obs = obs
        self._timer: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # (a ``getpid()`` per ``get_running_loop()`` on 3.11)

    def on_policy(self, policy: Policy) -> None:
        self.obs.on_policy(policy)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._timer = asyncio.create_task(self.obs.run_timers())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        await self.obs.close()

    def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        total = (self._loop or asyncio.get_running_loop()).time() - ctx.started
        cost_usd = ctx.cost_usd or settled_cost(ctx)  # (the budget's figure when it set one)
        self.obs.recorder.record(ctx, total, cost_usd)
        capture = ctx.audit
        sink = self.obs.access
        # The ~30-field access-log line only when something reads it (the log, an audit record).
        if capture is not None or (sink is not None and sink.enabled):
            facts = access_facts(ctx, total, cost_usd)
            self.obs.log_line(ctx, facts)
            if capture is not None and not self.obs.spawn(self.obs.audit_record(ctx, capture, facts)):
                self.obs.metrics.audit_records.labels("dropped").inc()
