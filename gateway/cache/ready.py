"""Stored entries ready to serve: decoded once, then reused by every hit on the same stored value.

A hit used to decode the entry's header, parse and re-encode the body for the new ``id`` and
``created``, and price the saved cost, each time. ``ReadyEntries`` keeps, per cache key, the stored
value it decoded, the ``Entry``, its ``Stamp`` (``gateway.cache.restamp``) and the saved cost under
the current policy's models; a hit whose stored value is the same bytes (the same object in the
in-process store, equal bytes from Redis) reuses them. Bounded in entries and bytes, oldest first out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.cache.entry import Entry
from gateway.cache.restamp import stamp_of

MAX_ENTRIES = 4096
MAX_BYTES = 32 * 1024 * 1024  # the stored values held here (the in-process store's are shared, not copied)


@dataclass(slots=True)
class Ready:
    """One decoded entry and what its hits need."""

    raw: bytes  # the stored value it was decoded from
    entry: Entry
    endpoint: str
    stamp: Callable[[int], bytes] | None  # None: the body is served as stored
    models: Any = None  # the policy's models ``served`` and ``saved`` were found in
    served: Any = None  # the ModelSpec of ``entry.model`` under ``models`` (None: not in the policy)
    saved: float = 0.0

    def body(self, created: int) -> bytes:
        """The body of one hit: a fresh id and ``created`` where the answer has them."""
        return self.entry.body if self.stamp is None else self.stamp(created)


def ready(raw: bytes, endpoint: str) -> Ready | None:
    """``raw`` decoded for ``endpoint`` (None: not an entry this version wrote, a miss)."""
    entry = Entry.decode(raw)
    if entry is None:
        return None
    return Ready(raw, entry, endpoint, stamp_of(entry.body, endpoint))


class ReadyEntries:
    """``Ready`` entries by cache key, oldest dropped first past ``max_entries`` or ``max_bytes``."""

    __slots__ = ("_by_key", "_bytes", "max_bytes", "max_entries")

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._by_key: dict[str, Ready] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str, raw: bytes, endpoint: str) -> Ready | None:
        """The entry stored as ``raw`` under ``key``, decoded once per stored value."""
        found = self._by_key.get(key)
        if found is not None and (found.raw is raw or found.raw == raw) and found.endpoint == endpoint:
            return found
        made = ready(raw, endpoint)
        if found is not None:
            self._forget(key)
        if made is not None and len(raw) <= self.max_bytes // 16:
            self._keep(key, made)
        return made

    def _keep(self, key: str, made: Ready) -> None:
        by_key = self._by_key
        while by_key and (len(by_key) >= self.max_entries or self._bytes + len(made.raw) > self.max_bytes):
            self._forget(next(iter(by_key)))
        by_key[key] = made
        self._bytes += len(made.raw)

    def _forget(self, key: str) -> None:
        self._bytes -= len(self._by_key.pop(key).raw)

    def clear(self) -> None:
        self._by_key.clear()
        self._bytes = 0
