"""The dead-letter queue: requests no deployment could answer, kept until replayed or dropped.

A record holds what is needed to re-send the request and to understand why it failed: the request
body as the client sent it, tenant (and a short key id, never the key), endpoint, public and served
model, the exhaustion action taken, and every attempt's deployment, status, error and timing.
Records live in the state backend's append-only log (a Redis stream, or the memory backend's JSONL
journal at ``state.dlq_path``), bounded by ``state.dlq_max``: a full queue refuses new records (and
counts them in ``dropped``) rather than trimming old ones, so nothing leaves the queue unless
``gateway dlq replay`` or ``gateway dlq drop`` removes it on purpose.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.policy.model import ApiKey, Policy, Tenant
from gateway.state.base import StateBackend, StateError
from gateway.state.logs import read_log

log = logging.getLogger("gateway.dlq")

RECORD_VERSION = 1
KEY_ID_LEN = 12  # hex chars of the key's sha256 kept to replay as the same key; reveals nothing usable
REPLAY_ENDPOINTS = ("chat", "completions", "embeddings")
TENANT_HEADER = "x-gateway-replay-tenant"  # whose request a replay is (admin route only)
KEY_HEADER = "x-gateway-replay-key"
ID_HEADER = "x-gateway-replay-id"


def dlq_key(policy: Policy) -> str:
    return f"{policy.state.key_prefix}:dlq"


def _attempts(ctx: RequestContext) -> list[dict[str, Any]]:
    return [
        {"deployment": a.deployment, "provider": a.provider, "status": a.status, "error_kind": a.error_kind,
         "error": a.error, "offset_s": round(a.started - ctx.started, 6), "duration_s": round(a.duration_s, 6),
         "ttfb_s": None if a.ttfb_s is None else round(a.ttfb_s, 6)}
        for a in ctx.attempts
    ]


def record_of(ctx: RequestContext, action: str) -> dict[str, Any]:
    """The stored form of an exhausted request (the body as sent, not as stages rewrote it)."""
    try:
        body = orjson.loads(ctx.raw_body) if ctx.raw_body else ctx.body
    except orjson.JSONDecodeError:
        body = ctx.body
    return {
        "v": RECORD_VERSION,
        "time": ctx.started_wall,
        "request_id": ctx.request_id,
        "tenant": ctx.tenant_name,
        "key_id": ctx.api_key.digest[:KEY_ID_LEN] if ctx.api_key is not None else "",
        "endpoint": ctx.endpoint if ctx.surface.name == "openai" else ctx.surface.name,
        "public_model": ctx.public_model,
        "model": ctx.model.name if ctx.model is not None else "",
        "action": action,
        "body": body,
        "attempts": _attempts(ctx),
    }


def replay_identity(policy: Policy, headers: Mapping[str, str]) -> tuple[Tenant, ApiKey | None]:
    """The stored tenant, and its key whose digest starts with the stored key id (else its first key)."""
    name = headers.get(TENANT_HEADER) or ""
    tenant = policy.tenants.get(name)
    if tenant is None:
        raise GatewayError(404, f"Unknown tenant '{name}' in {TENANT_HEADER}.", code="tenant_not_found",
                           outcome="rejected")
    key_id = headers.get(KEY_HEADER) or ""
    key = next((k for k in tenant.api_keys if key_id and k.digest.startswith(key_id)), None)
    return tenant, key or (tenant.api_keys[0] if tenant.api_keys else None)


class DeadLetterQueue:
    """The dead-letter sink: ``push`` from ``complete``, ``depth`` for metrics and health."""

    def __init__(self, backend: StateBackend, key: str, max_len: int) -> None:
        self.backend = backend
        self.key = key
        self.max_len = max_len
        self.written = 0
        self.dropped = 0  # records refused (queue full) or lost (backend down): alert on it

    async def push(self, ctx: RequestContext, action: str) -> str | None:
        """Append a record; on failure log loudly and count it (the client already has its answer)."""
        try:
            rid = await self.backend.log_append(self.key, record_of(ctx, action), self.max_len)
        except StateError as exc:
            self.dropped += 1
            log.error("dead-letter queue %s could not store request %s (tenant %s): %s", self.key,
                      ctx.request_id, ctx.tenant_name, exc)
            return None
        self.written += 1
        log.warning("request %s (tenant %s, model %s) exhausted every deployment: dead-lettered as %s",
                    ctx.request_id, ctx.tenant_name, ctx.public_model, rid)
        return rid

    async def depth(self) -> int:
        """Records waiting; raises ``StateError`` when the backend cannot say."""
        return await self.backend.log_len(self.key)

    async def entries(self, count: int = 100, after: str | None = None) -> list[tuple[str, dict]]:
        return await self.backend.log_range(self.key, count, after)

    async def all_entries(self, page: int = 500) -> list[tuple[str, dict]]:
        return await read_log(self.backend, self.key, page=page)

    def configure(self, policy: Policy) -> None:
        self.key, self.max_len = dlq_key(policy), policy.state.dlq_max

    async def remove(self, ids: list[str]) -> int:
        return await self.backend.log_remove(self.key, ids)
