"""Stored responses of the Responses API, in the state backend so any replica finds them.

A stored response keeps the Response object (for ``GET /v1/responses/{id}``) and the conversation
so far as chat messages (for a later turn's ``previous_response_id``), under the tenant's hash tag:
one tenant never reads another's, and on Redis Cluster they share the tenant's slot.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.state.base import StateBackend, hash_tag

TTL_S = 86_400.0  # how long a stored response can be read or continued


class ResponseStore:
    """Keys are ``<state.key_prefix>:{tenant}:resp:<id>``; the prefix comes from the request's policy."""

    def __init__(self, backend: StateBackend, ttl_s: float = TTL_S) -> None:
        self.backend = backend
        self.ttl_s = ttl_s

    @staticmethod
    def key(prefix: str, tenant: str, response_id: str) -> str:
        return f"{hash_tag(prefix, tenant)}:resp:{response_id}"

    async def get(self, prefix: str, tenant: str, response_id: str) -> dict[str, Any] | None:
        raw = await self.backend.get(self.key(prefix, tenant, response_id))
        return orjson.loads(raw) if raw else None

    async def put(self, prefix: str, tenant: str, response_id: str, record: dict[str, Any]) -> None:
        await self.backend.set(self.key(prefix, tenant, response_id), orjson.dumps(record), self.ttl_s)

    async def delete(self, prefix: str, tenant: str, response_id: str) -> bool:
        return bool(await self.backend.delete(self.key(prefix, tenant, response_id)))
