"""The state backend interface: everything replicas must share goes through it.

Two real implementations: ``MemoryBackend`` (one process, the embedded default) and ``RedisBackend``
(many replicas). Atomic multi-key logic (rate limits, budget reservations) is written once per
backend as a ``Script``: Lua for Redis (one round trip, atomic on the server) and a plain Python
function for memory (atomic because it never awaits). Stages call ``backend.run(script, keys, args)``
and never know which backend they talk to.

Every failure of the backend (connection refused, timeout, script error) surfaces as ``StateError``;
callers decide what a failure means (``state.on_backend_error``), the backend never guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.state.fused import FusedOp


class StateError(Exception):
    """The state backend could not answer (down, slow, or a script failed)."""


class LocalStore(Protocol):
    """What a Script's Python implementation may do to the memory backend's data.

    Values are arbitrary Python objects (numbers, dicts, lists); expiry is checked lazily against
    the backend's clock.
    """

    def get(self, key: str, default: Any = None) -> Any: ...
    def set(self, key: str, value: Any, ttl_s: float | None = None) -> None: ...
    def expire(self, key: str, ttl_s: float) -> None: ...
    def delete(self, key: str) -> None: ...
    def ttl(self, key: str) -> float | None: ...
    def expire_nx(self, key: str, ttl_s: float) -> None: ...


@dataclass(frozen=True)
class Script:
    """An atomic operation with a Lua body (Redis) and a Python twin (memory).

    ``local(store, keys, args, now)`` must mirror the Lua semantics exactly, including return
    values (lists of ints/strings as Redis would return them; floats are returned as strings by Lua
    scripts, so both sides should return strings for fractional numbers).
    ``now`` is wall time in seconds; the Lua side reads ``redis.call('TIME')`` unless the caller
    passes an explicit time (tests with a fake clock do).
    """

    name: str
    lua: str
    local: Callable[[LocalStore, list[str], list[Any], float], Any]


class StateBackend(Protocol):
    """Shared state. All methods raise ``StateError`` on backend failure."""

    kind: str  # "memory" | "redis"

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    # plain values (cache entries, small records); ttl in seconds, None = no expiry
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...
    # several SETs (key, value, ttl) as one call, one round trip on Redis; the keys share a {hash tag}
    async def set_many(self, items: list[tuple[str, bytes, float | None]]) -> None: ...
    async def delete(self, *keys: str) -> int: ...
    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int: ...

    # atomic scripts (rate limits, budgets)
    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any: ...
    # several stages' work of one phase as one atomic call, one reply per op (``gateway.state.fused``)
    async def run_fused(self, ops: list[FusedOp]) -> list[Any]: ...

    # append-only logs (dead-letter queue, feedback, review): bounded, ordered, ids are strings
    async def log_append(self, key: str, record: dict[str, Any], max_len: int) -> str: ...
    async def log_range(self, key: str, count: int = 100, after: str | None = None) -> list[tuple[str, dict]]: ...
    async def log_remove(self, key: str, ids: list[str]) -> int: ...
    async def log_len(self, key: str) -> int: ...


def local_hash(store: LocalStore, key: str) -> dict[str, Any]:
    """A Python twin's Redis hash at ``key``: the dict kept there, created empty (and stored) when absent."""
    found = store.get(key)
    if found is None:
        found = {}
        store.set(key, found)
    return found


def hash_tag(prefix: str, tenant: str) -> str:
    """Key prefix whose ``{...}`` tag puts all of one tenant's keys on one Redis Cluster slot."""
    return f"{prefix}:{{{tenant}}}"
