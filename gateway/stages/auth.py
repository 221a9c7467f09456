"""Tenant authentication: the request's key by its sha256 digest, a policy-file key first, then a
managed one (``gateway.keys.resolver``: cached per replica; a backend failure is a 503)."""

from __future__ import annotations

from gateway.context import RequestContext
from gateway.keys.resolver import KeyResolver
from gateway.pipeline import Stage, Verdict


class AuthStage(Stage):
    name = "auth"

    def __init__(self, keys: KeyResolver) -> None:
        self.keys = keys

    async def authenticate(self, ctx: RequestContext) -> Verdict:
        if ctx.tenant is not None:  # preset by a trusted admin route (DLQ replay runs as the stored tenant)
            return None
        ctx.tenant, ctx.api_key = await self.keys.authenticate(ctx.request.headers, ctx.policy)
        return None
