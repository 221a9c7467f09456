"""Tracing stage: each request as an OpenTelemetry span tree when the policy's ``tracing`` is on.

``authenticate`` opens the server span (timed from the request's arrival) and puts its
``traceparent`` in ``ctx.upstream_headers``, so every upstream attempt carries it, and starts the
request's phase marks (kept by the pipeline) and state call list (kept by the metered backend);
``complete`` (just before the observe stage, once usage, cost and outcome are settled) turns them
into child spans, fills the server span in and ends it. With tracing off both are one attribute
test, the pipeline tests ``ctx.phase_marks`` once per phase and the backend its ``traced`` flag once
per call: no span, list or clock read.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from gateway.context import RequestContext
from gateway.observability.audit import RedactorCache
from gateway.observability.metered import TRACED_CALLS, MeteredBackend
from gateway.observability.tracing import Tracing
from gateway.pipeline import Stage, Verdict
from gateway.plan import Scope
from gateway.policy.model import Policy
from gateway.state.base import StateBackend

MAX_CONTENT_CHARS = 16_000


class TracingStage(Stage):
    name = "tracing"

    def __init__(self, redactors: RedactorCache, backend: StateBackend) -> None:
        self.tracing = Tracing()
        self.redactors = redactors
        self.backend = backend

    def on_policy(self, policy: Policy) -> None:
        self.tracing.configure(policy.tracing)
        if isinstance(self.backend, MeteredBackend):
            self.backend.traced = self.tracing.tracer is not None

    def applies(self, scope: Scope) -> bool:
        return scope.policy.tracing.enabled

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.tracing.shutdown)

    async def authenticate(self, ctx: RequestContext) -> Verdict:
        if ctx.policy.tracing.enabled and self.tracing.tracer is not None:
            ctx.trace_span = self.tracing.start(ctx)
            ctx.phase_marks, ctx.state_calls = [], []
            TRACED_CALLS.set(ctx.state_calls)
        return None

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        if not ctx.policy.tracing.enabled or self.tracing.tracer is None:
            return
        if ctx.state_calls is not None:
            TRACED_CALLS.set(None)
        span = ctx.trace_span if ctx.trace_span is not None else self.tracing.start(ctx)
        content = None
        if ctx.policy.tracing.capture_content and ctx.body:
            redacted = self.redactors.for_request(ctx).value(ctx.body.get("messages") or ctx.body.get("input"))
            content = orjson.dumps(redacted).decode()[:MAX_CONTENT_CHARS]
        self.tracing.finish(ctx, span, time.time(), content, self.backend.kind)
