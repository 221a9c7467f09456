"""The dead-letter queue: requests no deployment could answer, kept until replayed or dropped.

A record holds what is needed to re-send the request and to understand why it failed: the request
body as the client sent it, tenant, the key that sent it (a short digest prefix for a policy-file key,
the id of a managed key; never the key), endpoint, public and served model, the exhaustion action
taken, and every attempt's deployment, status, error and timing.

A replay runs as that same key, with its limits and budgets (``replay_identity``), or as the identity
the operator declares (``gateway dlq replay --as``: a policy key's name or a managed key's id of the
same tenant). A key that was revoked, expired or removed since is never swapped for another: the replay
is refused (409, ``replay_key_*``) and the entry stays in the queue with that reason.
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
from gateway.keys.limits import identity
from gateway.keys.model import iso
from gateway.keys.store import KeyStore
from gateway.policy.model import ApiKey, Policy, Tenant
from gateway.state.base import StateBackend, StateError
from gateway.state.logs import read_log

log = logging.getLogger("gateway.dlq")

RECORD_VERSION = 1
KEY_ID_LEN = 12  # hex chars of the key's sha256 kept to replay as the same key; reveals nothing usable
REPLAY_ENDPOINTS = ("chat", "completions", "embeddings")
TENANT_HEADER = "x-gateway-replay-tenant"  # whose request a replay is (admin route only)
KEY_HEADER = "x-gateway-replay-key"  # a policy-file key's digest prefix (``key_id``)
MANAGED_HEADER = "x-gateway-replay-managed-key"  # a managed key's id (``managed_key``)
AS_HEADER = "x-gateway-replay-as"  # a declared identity instead: a policy key's name or a managed key's id
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
        "key_id": ctx.api_key.digest[:KEY_ID_LEN] if ctx.api_key is not None and not ctx.api_key.managed else "",
        "managed_key": ctx.api_key.name if ctx.api_key is not None and ctx.api_key.managed else "",
        "endpoint": ctx.endpoint if ctx.surface.name == "openai" else ctx.surface.name,
        "public_model": ctx.public_model,
        "model": ctx.model.name if ctx.model is not None else "",
        "action": action,
        "body": body,
        "attempts": _attempts(ctx),
    }


def refused(code: str, message: str) -> GatewayError:
    """A replay that must not run: the entry stays in the queue, the CLI prints ``message``."""
    return GatewayError(409, message + " The entry stays in the dead-letter queue (replay it with --as "
                        "another key of the tenant, or drop it).", code=code, outcome="rejected")


async def replay_identity(policy: Policy, headers: Mapping[str, str], store: KeyStore,
                          now: float) -> tuple[Tenant, ApiKey]:
    """The tenant and key a replay runs as: the declared one (``AS_HEADER``), else the original's."""
    name = headers.get(TENANT_HEADER) or ""
    tenant = policy.tenants.get(name)
    if tenant is None:
        raise GatewayError(404, f"Unknown tenant '{name}' in {TENANT_HEADER}.", code="tenant_not_found",
                           outcome="rejected")
    declared = headers.get(AS_HEADER) or ""
    if declared:
        key = next((k for k in tenant.api_keys if k.name == declared), None)
        return (tenant, key) if key is not None else await _managed(tenant, declared, store, now)
    managed = headers.get(MANAGED_HEADER) or ""
    if managed:
        return await _managed(tenant, managed, store, now)
    key_id = headers.get(KEY_HEADER) or ""
    key = next((k for k in tenant.api_keys if key_id and k.digest.startswith(key_id)), None)
    if key is None:
        raise refused("replay_key_unknown", f"The key that sent this request ({key_id or 'none recorded'}) is no "
                      f"longer a key of tenant '{name}' in the policy.")
    return tenant, key


async def _managed(tenant: Tenant, key_id: str, store: KeyStore, now: float) -> tuple[Tenant, ApiKey]:
    """A managed key of ``tenant`` as the auth path would run it; refused if it can no longer authenticate."""
    record = await store.key(key_id)
    if record is None or record.tenant != tenant.name:
        raise refused("replay_key_unknown", f"Key '{key_id}' is not a key of tenant '{tenant.name}' (deleted, or "
                      f"never one).")
    if record.revoked_at is not None:
        raise refused("replay_key_revoked", f"Key '{key_id}' was revoked at {iso(record.revoked_at)}.")
    if record.expires_at is not None and now >= record.expires_at:
        raise refused("replay_key_expired", f"Key '{key_id}' expired at {iso(record.expires_at)}.")
    team = await store.team(record.team) if record.team else None
    if record.team and team is None:
        raise refused("replay_key_unknown", f"The team '{record.team}' of key '{key_id}' was deleted.")
    return identity(tenant, record, team)


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
