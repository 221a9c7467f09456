"""Who is calling: tenant keys and admin keys, read the same way on every route.

A key arrives as ``Authorization: Bearer <key>`` (OpenAI clients), ``x-api-key`` (Anthropic clients)
or ``api-key`` (Azure clients). Keys are compared by sha256 digest, never stored in plain text.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from gateway.errors import GatewayError
from gateway.policy.model import ApiKey, Policy, Tenant

KEY_HEADERS = ("x-api-key", "api-key")


def presented_key(headers: Mapping[str, str]) -> str:
    """The key the caller sent, stripped; empty when there is none."""
    header = headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    for name in KEY_HEADERS:
        token = headers.get(name, "").strip()
        if token:
            return token
    return ""


def key_digest(headers: Mapping[str, str]) -> str | None:
    """sha256 hex of the presented key, or None."""
    header = headers.get("Authorization", "")  # (the usual spelling read in place; any other: ``presented_key``)
    token = header[7:].strip() if header.startswith("Bearer ") else presented_key(headers)
    if not token:
        return None
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: encoding the same way gives back the
    # exact bytes sent, so a key that is not UTF-8 is a plain 401 instead of a UnicodeEncodeError.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def printable_key(headers: Mapping[str, str]) -> str:
    """The presented key as text (to scrub it where a client pasted it into a body); never stored."""
    token = presented_key(headers)
    try:
        token.encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8 (aiohttp keeps them as surrogates): no text holds them
        return ""
    return token


def missing_api_key() -> GatewayError:
    return GatewayError(
        401,
        "Missing API key. Send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>').",
        code="missing_api_key",
        outcome="unauthorized",
    )


def policy_key(digest: str, policy: Policy) -> tuple[Tenant, ApiKey] | None:
    """The tenant and policy-file key of ``digest``, or None."""
    found = policy.key_index.get(digest)
    # The dict lookup is on a digest, so its timing reveals nothing usable about the key; the final
    # comparison is constant-time all the same.
    if found is None or not hmac.compare_digest(found[1].digest, digest):
        return None
    return found


def authenticate(headers: Mapping[str, str], policy: Policy) -> tuple[Tenant, ApiKey]:
    """The tenant and key of a request, or a 401."""
    digest = key_digest(headers)
    if digest is None:
        raise missing_api_key()
    found = policy_key(digest, policy)
    if found is None:
        raise GatewayError(401, "Incorrect API key provided.", code="invalid_api_key", outcome="unauthorized")
    return found


def admin_digests(policy: Policy) -> tuple[str, ...]:
    env = os.environ.get("GATEWAY_ADMIN_KEY")
    extra = (hashlib.sha256(env.encode()).hexdigest(),) if env else ()
    return tuple(policy.admin.api_keys) + extra


def require_admin(headers: Mapping[str, str], policy: Policy) -> None:
    """Raise 401/403 unless the request carries an admin key; tenant keys are refused."""
    digest = key_digest(headers)
    if digest is None:
        raise GatewayError(401, "Missing admin key: send a key listed (as sha256) in the policy's admin.api_keys, "
                           "or the GATEWAY_ADMIN_KEY the gateway runs with.", code="missing_api_key",
                           outcome="unauthorized")
    if not any(hmac.compare_digest(digest, d) for d in admin_digests(policy)):
        raise GatewayError(403, "This endpoint needs an admin key (policy admin.api_keys or GATEWAY_ADMIN_KEY); "
                           "tenant keys are refused.", code="admin_only", outcome="unauthorized")
