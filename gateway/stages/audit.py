"""Audit stages: capture what an audited request said and got back, and redact what goes upstream.

``AuditStage`` decides per request (``audit.bodies``, ``audit.sample_rate``) whether bodies are
captured into ``ctx.audit``, which the observe stage writes off the request path
(``gateway.observability.audit``). ``RedactUpstreamStage`` applies ``redact_upstream: true``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.observability.audit import REVIEW_BODY_LIMIT, Capture, RedactorCache, sampled, stream_text
from gateway.observability.redact import redact_request
from gateway.pipeline import GatewayResponse, Stage, Verdict
from gateway.plan import Scope
from gateway.policy.model import Tenant

INLINE_REDACT_BYTES = 65_536  # larger bodies are redacted for the upstream in a worker thread


class RedactUpstreamStage(Stage):
    """``redact_upstream: true``: the provider only ever sees the redacted request."""

    name = "redact_upstream"

    def __init__(self, redactors: RedactorCache) -> None:
        self.redactors = redactors

    def applies(self, scope: Scope) -> bool:
        return any(t.redact_upstream for t in _tenants(scope))

    async def check_input(self, ctx: RequestContext) -> Verdict:
        if ctx.tenant is None or not ctx.tenant.redact_upstream or not ctx.body:
            return None
        redactor = self.redactors.for_request(ctx)
        if len(ctx.raw_body) > INLINE_REDACT_BYTES:  # seconds of regex work on a multi-MB body: off the loop
            loop = asyncio.get_running_loop()
            body, changed = await loop.run_in_executor(None, redact_request, ctx.body, redactor)
        else:
            body, changed = redact_request(ctx.body, redactor)
        if changed:
            ctx.body, ctx.raw_body = body, orjson.dumps(body)
        return None


class AuditStage(Stage):
    """Decides per request whether bodies are captured (audit or review) and captures the answer."""

    name = "audit"

    def applies(self, scope: Scope) -> bool:
        return any(t.audit.bodies or t.audit.sample_rate > 0 for t in _tenants(scope))

    async def check_input(self, ctx: RequestContext) -> Verdict:
        tenant = ctx.tenant
        if tenant is None:
            return None
        review = sampled(ctx.request_id, tenant.audit.sample_rate)
        if tenant.audit.bodies or review:
            ctx.audit = Capture(bodies=tenant.audit.bodies, review=review, request=ctx.body)
        return None

    async def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        capture = ctx.audit
        if capture is None:
            return resp
        if resp.events is not None:
            resp.events = self._tee(capture, resp.events)
        elif resp.body:
            try:
                capture.response = orjson.loads(resp.body)
            except orjson.JSONDecodeError:
                capture.response = {"raw": resp.body[:REVIEW_BODY_LIMIT].decode("utf-8", "replace")}
        return resp

    async def _tee(self, capture: Capture, events: Any) -> Any:
        async for payload in events:
            if not capture.truncated:
                capture.add_text(stream_text(payload))
            yield payload


def _tenants(scope: Scope) -> tuple[Tenant, ...] | list[Tenant]:
    """The scope's tenant, or for the entry plan every tenant of the policy."""
    return (scope.tenant,) if scope.tenant is not None else list(scope.policy.tenants.values())
