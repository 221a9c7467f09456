"""Tenant authentication: the request's key, looked up by its sha256 digest (``gateway.auth``)."""

from __future__ import annotations

from gateway.auth import authenticate
from gateway.context import RequestContext
from gateway.pipeline import Stage, Verdict


class AuthStage(Stage):
    name = "auth"

    async def authenticate(self, ctx: RequestContext) -> Verdict:
        if ctx.tenant is not None:  # preset by a trusted admin route (DLQ replay runs as the stored tenant)
            return None
        ctx.tenant, ctx.api_key = authenticate(ctx.request.headers, ctx.policy)
        return None
