"""Where entries live: one small interface, an in-process store and the shared state backend.

The in-process store is a time-aware LRU table bounded in bytes (``cache.max_bytes``), not in
entries: answers range from a few bytes to megabytes, so an entry count says nothing about memory.
With ``state.backend: redis`` entries go through the ``StateBackend`` instead, so every replica
sees them; its failures surface as ``StateError`` and the cache stage turns them into a bypass.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

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
    """Least recently used first, expired first of all; an entry larger than the bound is not kept.

    What cachetools' ``TLRUCache`` did here (every expired entry goes before any live one is evicted;
    a read of a live entry makes it the most recently used), in plain structures: a hit is one dict
    read and a ``move_to_end`` instead of ~10 Python calls. Entries are ``(expires, value, size,
    serial)`` in an ordered dict, least recently used first; expiries are a heap of ``(expires, serial,
    key)`` whose entries replaced since are skipped.
    """

    kind = "memory"

    def __init__(self, max_bytes: int, clock: Clock) -> None:
        self._clock = clock
        self._max = max_bytes
        self._entries: OrderedDict[str, tuple[float, bytes, int, int]] = OrderedDict()
        self._expiries: list[tuple[float, int, str]] = []
        self._used = 0
        self._serial = 0

    @property
    def max_bytes(self) -> int:
        return self._max

    @property
    def used_bytes(self) -> int:
        self._expire(self._clock.time())
        return self._used

    def __len__(self) -> int:
        self._expire(self._clock.time())
        return len(self._entries)

    def resize(self, max_bytes: int) -> None:
        """A new bound (policy reload): keep the entries that still fit, most recently used last."""
        if max_bytes == self._max:
            return
        now = self._clock.time()
        kept = [(key, (slot[0], slot[1])) for key, slot in self._entries.items() if now < slot[0]]
        self._entries.clear()
        self._expiries.clear()
        self._used = 0
        self._max = max_bytes
        for key, value in kept:
            self._put(key, value)

    def _put(self, key: str, value: tuple[float, bytes]) -> None:
        now = self._clock.time()
        self._expire(now)
        expires, data = value
        size = len(data) + ENTRY_OVERHEAD
        if not now < expires or size > self._max:  # already expired, or larger than the whole store
            self._remove(key)
            return
        entries = self._entries
        old = entries.get(key)
        grows = size if old is None else size - old[2]
        while self._used + grows > self._max:  # least recently used out first
            lru = next(iter(entries))
            self._remove(lru)
            if lru == key:
                grows = size
        self._serial += 1
        entries[key] = (expires, data, size, self._serial)
        entries.move_to_end(key)
        self._used += grows
        heapq.heappush(self._expiries, (expires, self._serial, key))
        if len(self._expiries) > 2 * len(entries):  # replaced entries' expiries pile up: start again
            self._expiries = [(slot[0], slot[3], k) for k, slot in entries.items()]
            heapq.heapify(self._expiries)

    def _remove(self, key: str) -> None:
        slot = self._entries.pop(key, None)
        if slot is not None:
            self._used -= slot[2]

    def _expire(self, now: float) -> None:
        """Drop every entry whose time has come."""
        expiries, entries = self._expiries, self._entries
        while expiries and not now < expiries[0][0]:
            _, serial, key = heapq.heappop(expiries)
            slot = entries.get(key)
            if slot is not None and slot[3] == serial:
                self._remove(key)

    def get_now(self, key: str, now: float | None = None) -> bytes | None:
        """``get`` without a coroutine (the in-process store never waits), at ``now`` (the clock's time)."""
        slot = self._entries.get(key)
        if slot is None or not (self._clock.time() if now is None else now) < slot[0]:
            return None
        self._entries.move_to_end(key)
        return slot[1]

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
