"""Tenant authentication: the request's key by its sha256 digest, a policy-file key first, then a
managed one (``gateway.keys.resolver``: cached per replica; a backend failure is a 503).

A managed key that expires within the policy's ``admin.key_expiry_warning_s`` says so on every answer
(``x-gateway-key-expires-at``, RFC 3339), so clients and their operators see it coming; the gauges
``llm_gateway_key_expiry_seconds`` and ``llm_gateway_keys_expiring`` (``observability.gauges``) show it
per tenant."""

from __future__ import annotations

from gateway.clock import Clock
from gateway.context import RequestContext
from gateway.keys.model import iso
from gateway.keys.resolver import KeyResolver
from gateway.pipeline import Stage, Verdict

EXPIRY_HEADER = "x-gateway-key-expires-at"


class AuthStage(Stage):
    name = "auth"

    def __init__(self, keys: KeyResolver, clock: Clock) -> None:
        self.keys = keys
        self.clock = clock

    async def authenticate(self, ctx: RequestContext) -> Verdict:
        if ctx.tenant is not None:  # preset by a trusted admin route (DLQ replay runs as the stored tenant)
            return None
        ctx.tenant, ctx.api_key = await self.keys.authenticate(ctx.request.headers, ctx.policy)
        expires = ctx.api_key.expires_at
        if expires is not None and expires - self.clock.time() < ctx.policy.admin.key_expiry_warning_s:
            ctx.response_headers[EXPIRY_HEADER] = iso(expires) or ""
        return None
