"""Admin authentication: a separate key (policy ``admin.api_keys`` or ``GATEWAY_ADMIN_KEY``), never a tenant's."""

from __future__ import annotations

import hashlib
import hmac
import os

from aiohttp import web

from gateway.errors import GatewayError
from gateway.policy.model import Policy
from gateway.stages.auth import bearer_digest


def admin_digests(policy: Policy) -> tuple[str, ...]:
    env = os.environ.get("GATEWAY_ADMIN_KEY")
    extra = (hashlib.sha256(env.encode()).hexdigest(),) if env else ()
    return tuple(policy.admin.api_keys) + extra


def require_admin(request: web.Request, policy: Policy) -> None:
    """Raise 401/403 unless the request carries an admin key; tenant keys are refused."""
    digest = bearer_digest(request)
    if digest is None:
        raise GatewayError(401, "Missing admin key.", code="missing_api_key", outcome="unauthorized")
    if not any(hmac.compare_digest(digest, d) for d in admin_digests(policy)):
        raise GatewayError(403, "This endpoint needs an admin key.", code="admin_only", outcome="unauthorized")


def error_json(err: GatewayError) -> web.Response:
    return web.Response(status=err.status, body=err.body(), content_type="application/json", headers=err.headers)
