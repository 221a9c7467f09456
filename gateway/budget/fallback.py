"""The ``local`` fallback ledger, started from what the shared ledger last said, not from zero.

Every successful call to the shared ledger tells this replica a scope's level (``spent + held``).
When the shared ledger fails and ``on_backend_error`` is ``local``, each scope's local bucket is
seeded with the newest level seen (``SEED``, once per new observation) and the replica admits at
most its share of what was left: ``limit' = base + (limit - base) // replicas``, ``base`` the level
seen. A tenant already at its budget stays refused during the outage. Without an observation (a
replica that started during the outage) ``base`` is 0: a share of the whole budget, as before.

The bound this gives is written in ``docs/policy.md`` ("Budgets while Redis is down").
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from gateway.budget.ledger import Ledger, Reserved, ScopeArgs
from gateway.state.base import LocalStore, Script, local_hash

_SEED_LUA = "redis.call('HSET', KEYS[1], 'spent', ARGV[1]) return 1"


def _seed_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> int:
    local_hash(store, keys[0])["spent"] = int(args[0])
    return 1


SEED = Script(name="budget_seed", lua=_SEED_LUA, local=_seed_local)


class LocalFallback:
    """This replica's own ledger, and the levels it last saw on the shared one."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._seq = itertools.count(1)
        self._seen: dict[str, tuple[int, int]] = {}  # scope key -> (observation no., level)
        self._seeded: dict[str, tuple[int, int]] = {}  # scope key -> (observation no., base) seeded locally

    def observe(self, key: str, level: int) -> None:
        """A level the shared ledger returned for ``key`` (before or after a call)."""
        if len(self._seen) > 100_000:  # keys of past periods are never asked again
            self._seen.clear()
        self._seen[key] = (next(self._seq), level)

    def observe_levels(self, keys: Sequence[str], levels: Sequence[tuple[int, int]]) -> None:
        """``observe`` of each scope's ``spent + held`` (what a reserve or settle answered), in one call."""
        seen = self._seen
        if len(seen) > 100_000:  # ``observe``'s bound, checked once for the call
            seen.clear()
        for key, (spent, held) in zip(keys, levels, strict=True):  # ``observe`` inlined: twice a request
            seen[key] = (next(self._seq), spent + held)

    def seen(self, key: str) -> int | None:
        found = self._seen.get(key)
        return None if found is None else found[1]

    async def reserve(self, scopes: list[ScopeArgs], rid: str, hold_s: float, main: int, alt: int | None,
                      replicas: int) -> Reserved:
        local = [await self._share(s, replicas) for s in scopes]
        return await self.ledger.reserve(local, rid, hold_s, main, alt)

    async def _share(self, scope: ScopeArgs, replicas: int) -> ScopeArgs:
        """This replica's share of what the shared ledger had left, seeding the local bucket first."""
        seen = self._seen.get(scope.key)
        seeded = self._seeded.get(scope.key)
        if seen is not None and (seeded is None or seeded[0] < seen[0]):
            await self.ledger.backend.run(SEED, [scope.key], [seen[1]])
            seeded = self._seeded[scope.key] = seen
        base = seeded[1] if seeded is not None else 0
        soft = scope.soft
        if soft is not None and soft > base:
            soft = base + (soft - base) // replicas
        return replace(scope, limit=base + (scope.limit - base) // replicas, soft=soft)
