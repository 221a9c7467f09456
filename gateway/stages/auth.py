"""Tenant authentication: the request's key by its sha256 digest, a policy-file key first, then a
managed one (``gateway.keys.resolver``: cached per replica; a backend failure is a 503).

A managed key that expires within the policy's ``admin.key_expiry_warning_s`` says so on every answer
(``x-gateway-key-expires-at``, RFC 3339), so clients and their operators see it coming; the gauges
``llm_gateway_key_expiry_seconds`` and ``llm_gateway_keys_expiring`` (``observability.gauges``) show it
per tenant."""

from __future__ import annotations

from collections.abc import Awaitable

from gateway.clock import Clock
from gateway.context import RequestContext
from gateway.keys.model import iso
from gateway.keys.resolver import KeyResolver
from gateway.pipeline import Stage, Verdict
from gateway.policy.model import ApiKey, Tenant

EXPIRY_HEADER = "x-gateway-key-expires-at"


class AuthStage(Stage):
    name = "auth"

    def __init__(self, keys: KeyResolver, clock: Clock) -> None:
        self.keys = keys
        self.clock = clock

    def authenticate(self, ctx: RequestContext) -> Verdict | Awaitable[Verdict]:
        """Plain for a policy-file key (no coroutine); a managed key's lookup is returned to be awaited."""
        if ctx.tenant is not None:  # preset by a trusted admin route (DLQ replay runs as the stored tenant)
            return None
        found = self.keys.authenticate_now(ctx.request.headers, ctx.policy)
        if type(found) is not tuple:
            return self._managed(ctx, found)  # type: ignore[arg-type]
        ctx.tenant, ctx.api_key = found
        if found[1].expires_at is not None:  # (a policy-file key has none)
            self._warn_expiry(ctx, found[1].expires_at)
        return None

    async def _managed(self, ctx: RequestContext, pending: Awaitable[tuple[Tenant, ApiKey]]) -> Verdict:
        ctx.tenant, ctx.api_key = await pending
        if ctx.api_key.expires_at is not None:
            self._warn_expiry(ctx, ctx.api_key.expires_at)
        return None

    def _warn_expiry(self, ctx: RequestContext, expires: float) -> None:
        if expires - self.clock.time() < ctx.policy.admin.key_expiry_warning_s:
            ctx.response_headers[EXPIRY_HEADER] = iso(expires) or ""
