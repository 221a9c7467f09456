"""Tenant authentication: ``Authorization: Bearer <key>`` looked up by its sha256 digest."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.pipeline import Stage, Verdict
from gateway.policy.model import ApiKey, Policy, Tenant


def bearer_digest(request: web.Request) -> str | None:
    """sha256 hex of the bearer token (or ``api-key`` header, as Azure clients send), or None."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        token = header[7:].strip()
    else:
        token = request.headers.get("api-key", "").strip()
    if not token:
        return None
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: encoding the same way gives back the
    # exact bytes sent, so a key that is not UTF-8 is a plain 401 instead of a UnicodeEncodeError.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def authenticate(request: web.Request, policy: Policy) -> tuple[Tenant, ApiKey]:
    """The tenant and key of a request, or a 401 in the OpenAI error shape."""
    digest = bearer_digest(request)
    if digest is None:
        raise GatewayError(
            401,
            "Missing API key. Send it as 'Authorization: Bearer <key>'.",
            code="missing_api_key",
            outcome="unauthorized",
        )
    found = policy.key_index.get(digest)
    # The dict lookup is on a digest, so its timing reveals nothing usable about the key; the final
    # comparison is constant-time all the same.
    if found is None or not hmac.compare_digest(found[1].digest, digest):
        raise GatewayError(401, "Incorrect API key provided.", code="invalid_api_key", outcome="unauthorized")
    return found


class AuthStage(Stage):
    name = "auth"

    async def authenticate(self, ctx: RequestContext) -> Verdict:
        if ctx.tenant is not None:  # preset by a trusted admin route (DLQ replay runs as the stored tenant)
            return None
        ctx.tenant, ctx.api_key = authenticate(ctx.request, ctx.policy)
        return None
