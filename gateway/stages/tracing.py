"""Tracing stage: each request as an OpenTelemetry span tree when the policy's ``tracing`` is on.

``authenticate`` opens the server span (timed from the request's arrival) and puts its
``traceparent`` in ``ctx.upstream_headers``, so every upstream attempt carries it; ``complete``
(just before the observe stage, once usage, cost and outcome are settled) fills it in and ends it.
With tracing off both are one attribute test.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from gateway.context import RequestContext
from gateway.observability.audit import RedactorCache
from gateway.observability.tracing import Tracing
from gateway.pipeline import Stage, Verdict
from gateway.plan import Scope
from gateway.policy.model import Policy

MAX_CONTENT_CHARS = 16_000


class TracingStage(Stage):
    name = "tracing"

    def __init__(self, redactors: RedactorCache) -> None:
        self.tracing = Tracing()
        self.redactors = redactors

    def on_policy(self, policy: Policy) -> None:
        self.tracing.configure(policy.tracing)

    def applies(self, scope: Scope) -> bool:
        return scope.policy.tracing.enabled

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.tracing.shutdown)

    async def authenticate(self, ctx: RequestContext) -> Verdict:
        if ctx.policy.tracing.enabled and self.tracing.tracer is not None:
            ctx.trace_span = self.tracing.start(ctx)
        return None

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        if not ctx.policy.tracing.enabled or self.tracing.tracer is None:
            return
        span = ctx.trace_span if ctx.trace_span is not None else self.tracing.start(ctx)
        content = None
        if ctx.policy.tracing.capture_content and ctx.body:
            redacted = self.redactors.for_request(ctx).value(ctx.body.get("messages") or ctx.body.get("input"))
            content = orjson.dumps(redacted).decode()[:MAX_CONTENT_CHARS]
        self.tracing.finish(ctx, span, time.time(), content)
