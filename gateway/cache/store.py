"""Where entries live: one small interface, an in-process store and the shared state backend.

The in-process store is a cachetools TLRU cache bounded in bytes (``cache.max_bytes``), not in
entries: answers range from a few bytes to megabytes, so an entry count says nothing about memory.
With ``state.backend: redis`` entries go through the ``StateBackend`` instead, so every replica
sees them; its failures surface as ``StateError`` and the cache stage turns them into a bypass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cachetools import TLRUCache

from gateway.clock import Clock
from gateway.state.base import StateBackend

ENTRY_OVERHEAD = 128  # bytes counted per entry on top of its value: key, tuple, dict slot


@dataclass(slots=True)
class CacheStats:
    """Counters of the cache in this process (``services.extras["cache_stats"]``).

    ``hits`` served from a stored entry, ``coalesced`` served by an identical request in flight,
    ``stale`` expired entries served by failover, ``misses``/``bypasses`` as in ``x-cache``,
    ``stores`` entries written, ``skipped`` answers not stored (too large, incomplete, an error),
    ``backend_errors`` failed reads or writes of the state backend (each one a bypass, never a failure).
    """

    hits: int = 0
    coalesced: int = 0
    stale: int = 0
    misses: int = 0
    bypasses: int = 0
    stores: int = 0
    skipped: int = 0
    backend_errors: int = 0


class CacheStore(Protocol):
    kind: str

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...


class MemoryStore:
    """Least recently used first, expired first of all; an entry larger than the bound is not kept."""

    kind = "memory"

    def __init__(self, max_bytes: int, clock: Clock) -> None:
        self._clock = clock
        self._cache = self._new(max_bytes)

    def _new(self, max_bytes: int) -> TLRUCache:
        return TLRUCache(maxsize=max_bytes, ttu=lambda _k, value, _now: value[0], timer=self._clock.time,
                         getsizeof=lambda value: len(value[1]) + ENTRY_OVERHEAD)

    @property
    def max_bytes(self) -> int:
        return int(self._cache.maxsize)

    @property
    def used_bytes(self) -> int:
        return int(self._cache.currsize)

    def __len__(self) -> int:
        return len(self._cache)

    def resize(self, max_bytes: int) -> None:
        """A new bound (policy reload): keep the entries that still fit, most recently used last."""
        if max_bytes == self.max_bytes:
            return
        old, self._cache = self._cache, self._new(max_bytes)
        for key, value in list(old.items()):
            self._put(key, value)

    def _put(self, key: str, value: tuple[float, bytes]) -> None:
        try:
            self._cache[key] = value
        except ValueError:  # larger than the whole cache
            self._cache.pop(key, None)

    def get_now(self, key: str) -> bytes | None:
        """``get`` without a coroutine (the in-process store never waits)."""
        value = self._cache.get(key)
        return None if value is None else value[1]

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._put(key, (self._clock.time() + ttl_s, value))


class BackendStore:
    """Entries in the shared state backend (Redis), with the backend's own expiry."""

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend
        self.kind = backend.kind

    async def get(self, key: str) -> bytes | None:
        return await self.backend.get(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.backend.set(key, value, ttl_s)
