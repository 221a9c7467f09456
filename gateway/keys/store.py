"""Where managed keys and teams live in the state backend, so every replica sees the same ones.

Layout, all under one hash tag (one Redis Cluster slot, so the lookup is one script call):
``<prefix>:{mk}:key:<id>`` and ``:team:<id>`` (JSON records), ``:dig:<sha256>`` (a secret's digest ->
key id; an old secret in its rotation grace has a TTL), and sorted-set indexes for paging:
``:keys:<tenant>``, ``:tkeys:<team>``, ``:teams:<tenant>``, ``:tenants`` (every tenant that has
keys or teams, to find orphans); ``:exp:<tenant>`` (key id scored by its
expiry, usable keys with an ``expires_at`` only: what the expiry gauges read at scrape time); ``:audit`` is
the log of admin changes. Records are never deleted by a revoke (``revoked_at`` is set and the digest
removed), so a revoked key still shows in ``GET``; ``prune`` deletes the keys and teams of a tenant the
policy no longer has.
"""

from __future__ import annotations

import bisect
import hashlib
import secrets
from typing import Any

import orjson

from gateway.keys.model import KeyRecord, TeamRecord, key_from, stored_key, stored_team, team_from
from gateway.state.base import LocalStore, Script, StateBackend, hash_tag

SECRET_PREFIX = "sk-gw-"
PREFIX_LEN = 10  # "sk-gw-" and four characters: enough to recognise a key, far too few to guess it
AUDIT_MAX = 100_000  # admin changes the audit log keeps; past it new records are refused (and logged)


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _lookup_local(store: LocalStore, keys: list[str], args: list[Any], _now: float) -> Any:
    found = _text(store.get(keys[0]))
    return None if found is None else store.get(args[0] + found)


LOOKUP = Script("keys_lookup", """
local id = redis.call('GET', KEYS[1])
if not id then return false end
return redis.call('GET', ARGV[1] .. id)
""", _lookup_local)


def _index_add_local(store: LocalStore, keys: list[str], args: list[Any], _now: float) -> int:
    ids = store.get(keys[0]) or []
    if args[0] in ids:
        return 0
    bisect.insort(ids, args[0])
    store.set(keys[0], ids)
    return 1


def _index_rem_local(store: LocalStore, keys: list[str], args: list[Any], _now: float) -> int:
    ids = store.get(keys[0]) or []
    if args[0] not in ids:
        return 0
    ids.remove(args[0])
    store.set(keys[0], ids) if ids else store.delete(keys[0])
    return 1


def _index_range_local(store: LocalStore, keys: list[str], args: list[Any], _now: float) -> list[str]:
    ids = store.get(keys[0]) or []
    start = bisect.bisect_right(ids, args[0]) if args[0] else 0
    return ids[start:start + int(args[1])]


INDEX_ADD = Script("keys_index_add", "return redis.call('ZADD', KEYS[1], 0, ARGV[1])", _index_add_local)
INDEX_REM = Script("keys_index_rem", "return redis.call('ZREM', KEYS[1], ARGV[1])", _index_rem_local)
INDEX_RANGE = Script("keys_index_range", """
local low = '-'
if ARGV[1] ~= '' then low = '(' .. ARGV[1] end
return redis.call('ZRANGEBYLEX', KEYS[1], low, '+', 'LIMIT', 0, tonumber(ARGV[2]))
""", _index_range_local)


def _expiry_set_local(store: LocalStore, keys: list[str], args: list[Any], _now: float) -> int:
    scores = dict(store.get(keys[0]) or {})
    if args[1] == "":
        removed = scores.pop(args[0], None) is not None
    else:
        removed, scores[args[0]] = False, float(args[1])
    store.set(keys[0], scores) if scores else store.delete(keys[0])
    return int(removed)


def _expiry_stats_local(store: LocalStore, keys: list[str], args: list[Any], _now: float) -> list[Any]:
    now, until = float(args[0]), float(args[1])
    ahead = sorted(s for s in (store.get(keys[0]) or {}).values() if s > now)
    within = sum(1 for s in ahead if s <= until)
    return [within, repr(ahead[0])] if ahead else [within]


EXPIRY_SET = Script("keys_expiry_set", """
if ARGV[2] == '' then return redis.call('ZREM', KEYS[1], ARGV[1]) end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 0
""", _expiry_set_local)
EXPIRY_STATS = Script("keys_expiry_stats", """
local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local within = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], ARGV[2])
if #first == 0 then return {within} end
return {within, first[2]}
""", _expiry_stats_local)


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(8)}"


class KeyStore:
    """Managed keys and teams on a state backend; every method may raise ``StateError``."""

    def __init__(self, backend: StateBackend, prefix: str) -> None:
        self.backend = backend
        self.base = f"{hash_tag(prefix, 'mk')}:"

    # -- lookup (the auth path) ---------------------------------------------------------------------
    async def by_digest(self, digest: str) -> KeyRecord | None:
        raw = await self.backend.run(LOOKUP, [f"{self.base}dig:{digest}"], [f"{self.base}key:"])
        return None if raw is None else key_from(orjson.loads(raw))

    # -- records ------------------------------------------------------------------------------------
    async def key(self, key_id: str) -> KeyRecord | None:
        raw = await self.backend.get(f"{self.base}key:{key_id}")
        return None if raw is None else key_from(orjson.loads(raw))

    async def team(self, team_id: str) -> TeamRecord | None:
        raw = await self.backend.get(f"{self.base}team:{team_id}")
        return None if raw is None else team_from(orjson.loads(raw))

    async def put_key(self, key: KeyRecord) -> None:
        """The record, then its place in the tenant's expiry index (usable keys with an expiry only)."""
        await self.backend.set(f"{self.base}key:{key.id}", orjson.dumps(stored_key(key)))
        score = "" if key.expires_at is None or key.revoked_at is not None else repr(key.expires_at)
        await self.backend.run(EXPIRY_SET, [f"{self.base}exp:{key.tenant}"], [key.id, score])

    async def put_team(self, team: TeamRecord) -> None:
        await self.backend.set(f"{self.base}team:{team.id}", orjson.dumps(stored_team(team)))

    async def add_key(self, key: KeyRecord) -> None:
        """Record, indexes, then the digest: a key authenticates only once all of it is written."""
        await self.put_key(key)
        await self.backend.run(INDEX_ADD, [f"{self.base}tenants"], [key.tenant])
        await self.backend.run(INDEX_ADD, [f"{self.base}keys:{key.tenant}"], [key.id])
        if key.team:
            await self.backend.run(INDEX_ADD, [f"{self.base}tkeys:{key.team}"], [key.id])
        await self.backend.set(f"{self.base}dig:{key.digest}", key.id.encode())

    async def add_team(self, team: TeamRecord) -> None:
        await self.put_team(team)
        await self.backend.run(INDEX_ADD, [f"{self.base}tenants"], [team.tenant])
        await self.backend.run(INDEX_ADD, [f"{self.base}teams:{team.tenant}"], [team.id])

    async def remove_team(self, team: TeamRecord) -> None:
        await self.backend.run(INDEX_REM, [f"{self.base}teams:{team.tenant}"], [team.id])
        await self.backend.delete(f"{self.base}team:{team.id}", f"{self.base}tkeys:{team.id}")

    async def rotate(self, key: KeyRecord, new: KeyRecord, grace_s: float) -> None:
        """The new digest first, then the record; the old digest lives ``grace_s`` more (0: gone now)."""
        await self.backend.set(f"{self.base}dig:{new.digest}", key.id.encode())
        await self.put_key(new)
        old = f"{self.base}dig:{key.digest}"
        if grace_s > 0:
            await self.backend.set(old, key.id.encode(), grace_s)
        else:
            await self.backend.delete(old)

    async def revoke(self, key: KeyRecord) -> None:
        """The record says revoked (an old secret still in its grace is refused too), the digest goes."""
        await self.put_key(key)
        await self.backend.delete(f"{self.base}dig:{key.digest}")

    async def expiry(self, tenant: str, now: float, window_s: float) -> tuple[int, float | None]:
        """Keys of ``tenant`` expiring within ``window_s`` of ``now``, and the soonest future expiry."""
        got = await self.backend.run(EXPIRY_STATS, [f"{self.base}exp:{tenant}"], [repr(now), repr(now + window_s)])
        return int(got[0]), float(got[1]) if len(got) > 1 else None

    # -- orphans: what tenants removed from the policy left ---------------------------------------------
    async def tenants(self) -> list[str]:
        """Every tenant that has (or had, until pruned) managed keys or teams."""
        return await self.all_ids("tenants")

    async def all_ids(self, index: str) -> list[str]:
        """Every member of one index, a page at a time."""
        ids: list[str] = []
        after = ""
        while True:
            page, more = await self.page(index, after, 1000)
            ids += page
            if not more or not page:
                return ids
            after = page[-1]

    async def prune_tenant(self, tenant: str) -> tuple[list[str], int]:
        """Delete every key and team of ``tenant`` (digests first, so nothing authenticates half-way);
        idempotent: a prune cut short is finished by running it again. Returns the deleted keys'
        digests (for the caller's auth cache) and the number of teams deleted."""
        key_ids, team_ids = await self.all_ids(f"keys:{tenant}"), await self.all_ids(f"teams:{tenant}")
        digests = []
        for key_id in key_ids:
            key = await self.key(key_id)
            if key is not None:
                digests.append(key.digest)
                await self.backend.delete(f"{self.base}dig:{key.digest}")
            await self.backend.delete(f"{self.base}key:{key_id}")
        for team_id in team_ids:
            await self.backend.delete(f"{self.base}team:{team_id}", f"{self.base}tkeys:{team_id}")
        await self.backend.delete(f"{self.base}keys:{tenant}", f"{self.base}teams:{tenant}", f"{self.base}exp:{tenant}")
        await self.backend.run(INDEX_REM, [f"{self.base}tenants"], [tenant])
        return digests, len(team_ids)

    # -- audit ----------------------------------------------------------------------------------------
    @property
    def audit_key(self) -> str:
        return f"{self.base}audit"

    async def audit(self, record: dict[str, Any]) -> None:
        """Append one admin change (who, what, before/after: key objects, never a secret or a digest)."""
        await self.backend.log_append(self.audit_key, record, AUDIT_MAX)

    # -- paging ---------------------------------------------------------------------------------------
    async def page(self, index: str, after: str, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` ids after ``after`` in id order, and whether more follow."""
        ids = await self.backend.run(INDEX_RANGE, [f"{self.base}{index}"], [after, limit + 1])
        return list(ids[:limit]), len(ids) > limit

    async def keys_page(self, tenant: str, team: str | None, after: str, limit: int
                        ) -> tuple[list[KeyRecord], bool]:
        ids, more = await self.page(f"tkeys:{team}" if team else f"keys:{tenant}", after, limit)
        found = [await self.key(i) for i in ids]
        return [k for k in found if k is not None and k.tenant == tenant], more

    async def teams(self, tenant: str) -> list[TeamRecord]:
        ids, _ = await self.page(f"teams:{tenant}", "", 10_000)
        found = [await self.team(i) for i in ids]
        return [t for t in found if t is not None]
