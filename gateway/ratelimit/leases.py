"""This replica's live concurrency slots, renewed so that only a crashed replica's slots expire.

A slot is a lease of ``LEASE_US``; while its request runs, this replica pushes the lease forward
every third of it (one script call per tenant and backend). A replica that dies stops renewing, and
its slots leave the count within one lease. A renewal that fails (backend down) is simply retried at
the next tick; a slot whose lease ran out meanwhile is not recreated. The shared memory backend's slots
have no lease (one process: they cannot outlive their holder), so they are never held here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from gateway.ratelimit.scripts import RELEASE, RENEW
from gateway.ratelimit.stats import RateLimitStats
from gateway.ratelimit.window import LEASE_US
from gateway.state import StateBackend, StateError

log = logging.getLogger("gateway.ratelimit")

RENEW_EVERY_S = LEASE_US / 1_000_000 / 3


class Leases:
    def __init__(self, stats: RateLimitStats) -> None:
        self.stats = stats
        # (backend id, tenant) -> (backend, {token: slot keys})
        self._held: dict[tuple[int, str], tuple[StateBackend, dict[str, tuple[str, ...]]]] = {}

    def __len__(self) -> int:
        return sum(len(tokens) for _, tokens in self._held.values())

    def add(self, backend: StateBackend, tenant: str, token: str, keys: tuple[str, ...]) -> None:
        group = self._held.setdefault((id(backend), tenant), (backend, {}))
        group[1][token] = keys

    def remove(self, backend: StateBackend, tenant: str, token: str) -> None:
        group = self._held.get((id(backend), tenant))
        if group is not None:
            group[1].pop(token, None)
            if not group[1]:
                del self._held[(id(backend), tenant)]

    async def renew(self) -> None:
        """One renewal round: a script call per (backend, tenant) holding slots."""
        for backend, tokens in list(self._held.values()):
            by_key: dict[str, list[str]] = {}
            for token, keys in list(tokens.items()):
                for key in keys:
                    by_key.setdefault(key, []).append(token)
            args: list[Any] = [LEASE_US]
            for members in by_key.values():
                args += [len(members), *members]
            try:
                self.stats.lease_renewals += int(await backend.run(RENEW, list(by_key), args) or 0)
            except StateError as exc:
                log.debug("lease renewal failed: %s", exc)

    async def run(self, every_s: float = RENEW_EVERY_S) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.renew()
            except Exception:  # noqa: BLE001 - the renewer must outlive a bad round
                log.exception("lease renewal round failed")


class PendingReleases:
    """Releases (slots and token corrections) the shared backend did not confirm, replayed on recovery.

    A release is idempotent (``ZREM`` of the slot, the token entry *set* to the real use), so one that
    did apply although its answer was lost is harmless to send again. Without this, a slot taken by a
    call that timed out (applied once Redis answered) or kept because the release failed would hold
    capacity until its lease ran out (``LEASE_US``), long after Redis is back. Bounded: past
    ``max_len`` the oldest are left to expire on their own.
    """

    def __init__(self, stats: RateLimitStats, max_len: int = 100_000) -> None:
        self.stats = stats
        self.items: deque[tuple[list[str], list[Any]]] = deque(maxlen=max_len)  # oldest first
        self._busy = False

    def __len__(self) -> int:
        return len(self.items)

    def add(self, keys: list[str], args: list[Any]) -> None:
        self.items.append((keys, args))

    async def replay(self, backend: StateBackend) -> bool:
        """Send them all (pipelined, one batch); False if the backend failed (what failed stays)."""
        if self._busy or not self.items:
            return True
        self._busy = True
        try:
            items = list(self.items)
            self.items.clear()
            replies = await asyncio.gather(*(backend.run(RELEASE, k, a) for k, a in items), return_exceptions=True)
            failed = [item for item, reply in zip(items, replies, strict=True) if isinstance(reply, BaseException)]
            self.items.extendleft(reversed(failed))
            self.stats.releases_replayed += len(items) - len(failed)
            for reply in replies:
                if isinstance(reply, BaseException) and not isinstance(reply, StateError):
                    raise reply
            return not failed
        finally:
            self._busy = False
