"""The spend ledger: atomic reserve and settle, one round trip each, on any state backend.

Per budget scope (a tenant, or one API key) and period there are two keys, both under the
tenant's hash tag so a request's scopes are always on one Redis Cluster slot:

* ``<tag>:bud:<scope>:<period>`` a hash: ``spent`` and ``held`` (pico-dollars) and one
  ``r:<id>`` field per live reservation;
* ``<tag>:bud:<scope>:<period>:exp`` a sorted set: reservation id -> expiry (wall seconds);
* ``<tag>:settled`` a sorted set: settle id -> when it applied, kept ``state.settled_ids_ttl_s``, so a settle
  whose answer was lost (a timeout: "unknown", never "failed") can be replayed without charging twice.

Reserve first releases reservations whose replica never settled them (expired), then admits the
request only if ``spent + held + amount <= limit`` in every enforced scope, and holds ``amount``
in every scope. Settle releases the hold and adds the real cost; it also adds the request to the
per-tenant day record ``<tag>:spend:<YYYY-MM-DD>`` (fields ``<model>:usd|n|est|in|out|cached``
and ``k|<key name>:usd|n``). Amounts are integers, so ``HINCRBY`` keeps them exact; Lua compares
them as doubles (exact up to 2**53 pico-dollars, ~9,000 USD, and off by a few pico-dollars above).

On the memory backend the natives (``ReserveOp.native``, ``settle_now``) run on every request: they
read and write the store's dicts directly (``MemoryStore.data``) at one clock reading, under its
rules, rather than calling it per key; the stored values and expiries are the calls' own.
"""

from __future__ import annotations

import functools
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.state.base import LocalStore, Script, StateBackend, hash_tag
from gateway.state.fused import Fragment, FusedCtx
from gateway.state.memory import MemoryStore
from gateway.state.zset import ZSet

MAX_PURGE = 100  # expired reservations released per scope per reserve, to bound one script's work
SETTLED_TTL_S = 6 * 3600.0  # how long a settle id is remembered (state.settled_ids_ttl_s sets the shared one)

# -- reserve --------------------------------------------------------------------------------------
# KEYS: B1 Z1 [B2 Z2 ...]   ARGV: rid hold_s main alt, then per scope: limit soft enforce downgrade ttl_ms
_RESERVE_LUA = """
local rid, hold_s, main, alt = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local n = #KEYS / 2
local function arg(i, k) return ARGV[4 + (i - 1) * 5 + k] end
local levels, out = {}, {}
for i = 1, n do
  local b, z = KEYS[2 * i - 1], KEYS[2 * i]
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, MAX_PURGE)
  for _, old in ipairs(expired) do
    local amt = redis.call('HGET', b, 'r:' .. old)
    if amt then
      if amt ~= '0' then redis.call('HINCRBY', b, 'held', '-' .. amt) end  -- Redis refuses '-0'
      redis.call('HDEL', b, 'r:' .. old)
    end
    redis.call('ZREM', z, old)
  end
  local spent = redis.call('HGET', b, 'spent') or '0'
  local held = redis.call('HGET', b, 'held') or '0'
  out[#out + 1] = spent
  out[#out + 1] = held
  levels[i] = tonumber(spent) + tonumber(held)
end
local function over(amount)
  for i = 1, n do
    if arg(i, 3) == '1' and levels[i] + tonumber(amount) > tonumber(arg(i, 1)) then return i end
  end
  return 0
end
local may_alt, use_alt = false, false
if alt ~= '' then
  for i = 1, n do
    if arg(i, 4) == '1' then
      may_alt = true
      if arg(i, 2) ~= '' and levels[i] >= tonumber(arg(i, 2)) then use_alt = true end
    end
  end
end
local amount = main
if use_alt then amount = alt end
local refused = over(amount)
if refused > 0 and may_alt and not use_alt and over(alt) == 0 then
  use_alt, amount, refused = true, alt, 0
end
if refused > 0 then --OVER--
 return {'over', tostring(refused), unpack(out)} end
for i = 1, n do
  local b, z = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('HINCRBY', b, 'held', amount)
  redis.call('HSET', b, 'r:' .. rid, amount)
  redis.call('ZADD', z, now + hold_s, rid)
  local ttl = tonumber(arg(i, 5))
  if ttl > 0 then
    redis.call('PEXPIRE', b, ttl)
    redis.call('PEXPIRE', z, ttl)
  end
end
local verdict = 'main'
if use_alt then verdict = 'alt' end
--HELD--
return {verdict, '0', unpack(out)}
""".replace("MAX_PURGE", str(MAX_PURGE))

# The fused-call form (``gateway.state.fused``): a refusal stops the ops after it; a hold tells them
# which variant (main or alt) was reserved and how to undo it if a later op refuses.
_RESERVE_FRAGMENT_LUA = _RESERVE_LUA.replace(
    "--OVER--", "fx.refused = true for j = #fx.undo, 1, -1 do fx.undo[j]() end fx.undo = {}").replace("--HELD--", """
fx.variant = verdict
fx.undo[#fx.undo + 1] = function()
  for i = 1, n do
    local b, z = KEYS[2 * i - 1], KEYS[2 * i]
    if redis.call('HDEL', b, 'r:' .. rid) == 1 and amount ~= '0' then redis.call('HINCRBY', b, 'held', '-' .. amount) end
    redis.call('ZREM', z, rid)
  end
end
""")
_RESERVE_LUA = _RESERVE_LUA.replace("--OVER--", "").replace("--HELD--", "")



_NEVER = float("inf")  # the deadline of a key that has none, for one comparison


def _gone(store: MemoryStore, key: str) -> None:
    """An expired key, read directly from ``MemoryStore.data``: dropped, as ``get`` drops it (``None``)."""
    store.delete(key)


def _purge(store: LocalStore, bucket: dict[str, int] | None, exp: ZSet, z: str, now: float) -> None:
    """Release up to ``MAX_PURGE`` expired reservations of ``exp`` (its oldest is due), oldest first:
    O(released), never a scan of the held ones (a gateway holding thousands of long streams reserves
    on every request). An emptied set goes, as on Redis."""
    expired = exp.pop_through(now, MAX_PURGE)
    for rid in expired:
        if bucket is not None and f"r:{rid}" in bucket:
            bucket["held"] = bucket.get("held", 0) - bucket.pop(f"r:{rid}")
    if not exp:
        store.delete(z)


def _unhold(store: LocalStore, z: str, rid: str) -> None:
    """ZREM a reservation's expiry; an emptied set goes, as on Redis."""
    exp = store.get(z)
    if isinstance(exp, ZSet) and exp.remove(rid) and not exp:
        store.delete(z)


def _over(scopes: Sequence[ScopeArgs], levels: list[int], amount: int) -> int:
    """The 1-based index of the first enforced scope ``amount`` does not fit in, 0 if it fits in all
    (``levels``: spent, held per scope)."""
    i = 0
    for s in scopes:
        if s.enforce and levels[i] + levels[i + 1] + amount > s.limit:
            return i // 2 + 1
        i += 2
    return 0


def _fit(scopes: Sequence[ScopeArgs], levels: list[int], main: int, alt: int) -> tuple[int, bool, int]:
    """The amount to hold, whether it is ``alt`` (a downgrade) and the refusing scope (``_over``), for a
    request that may downgrade: ``alt`` past a downgrading scope's soft threshold, or when only it fits."""
    use_alt = may_alt = False
    for i, s in enumerate(scopes):
        if s.downgrade:
            may_alt = True
            if s.soft is not None and levels[2 * i] + levels[2 * i + 1] >= s.soft:
                use_alt = True
    amount = alt if use_alt else main
    refused = _over(scopes, levels, amount)
    if refused and may_alt and not use_alt and _over(scopes, levels, alt) == 0:
        return alt, True, 0
    return amount, use_alt, refused


def _reserve_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[Any]:
    """Python twin of ``_RESERVE_LUA``: its arguments parsed, then ``reserve_scopes``."""
    n = len(keys) // 2
    scopes = []
    for i in range(n):
        limit, soft, enforce, downgrade, ttl_ms = args[4 + i * 5: 9 + i * 5]
        scopes.append(ScopeArgs(keys[2 * i], int(limit), None if str(soft) == "" else int(soft),
                                str(enforce) == "1", str(downgrade) == "1", int(ttl_ms)))
    alt = None if str(args[3]) == "" else int(args[3])
    reply = reserve_scopes(store, scopes, [keys[2 * i + 1] for i in range(n)], str(args[0]), float(args[1]),
                           int(args[2]), alt, now)
    return [reply[0], str(reply[1]), *map(str, reply[2:])]


def reserve_scopes(store: MemoryStore, scopes: Sequence[ScopeArgs], exp_keys: Sequence[str], rid: str,
                   hold_s: float, main: int, alt: int | None, now: float, fx: FusedCtx | None = None) -> list[Any]:
    """The reservation on typed scopes (the native form): ``[verdict, over, spent, held, ...]``
    (``ReserveOp.native``, which a fused call runs itself)."""
    return ReserveOp(scopes, rid, hold_s, main, alt, exp_keys).native(store, now, fx)


def _unreserve(store: LocalStore, scopes: Sequence[ScopeArgs], exp_keys: Sequence[str], rid: str,
               amount: int) -> None:
    """Undo a reservation a later op of its fused call refused."""
    field = "r:" + rid
    for i, s in enumerate(scopes):
        bucket = store.get(s.key)
        if bucket is not None and bucket.pop(field, None) is not None:
            bucket["held"] = bucket.get("held", 0) - amount
        _unhold(store, exp_keys[i], rid)


RESERVE = Script(name="budget_reserve", lua=_RESERVE_LUA, local=_reserve_local)

# -- settle ---------------------------------------------------------------------------------------
# KEYS: B1 Z1 [B2 Z2 ...] D I   ARGV: rid cost d_ttl_ms i_ttl_ms, one ttl_ms per scope, then field amount pairs for D
# I (the tenant's ``settled`` sorted set: settle id -> when applied) makes a settle idempotent: a
# replay of one that applied (its reply lost to a timeout) changes nothing and answers 'dup'.
_SETTLE_LUA = """
local rid, cost, dttl, ittl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local n = (#KEYS - 2) / 2
local ids = KEYS[#KEYS]
local status = 'dup'
if not redis.call('ZSCORE', ids, rid) then
  status = 'ok'
  redis.call('ZREMRANGEBYSCORE', ids, '-inf', now - ittl / 1000)
  for i = 1, n do
    local b, z = KEYS[2 * i - 1], KEYS[2 * i]
    local amt = redis.call('HGET', b, 'r:' .. rid)
    if amt then
      if amt ~= '0' then redis.call('HINCRBY', b, 'held', '-' .. amt) end  -- Redis refuses '-0' (a free model)
      redis.call('HDEL', b, 'r:' .. rid)
    end
    redis.call('ZREM', z, rid)
    redis.call('HINCRBY', b, 'spent', cost)
    local ttl = tonumber(ARGV[4 + i])
    if ttl > 0 and redis.call('PTTL', b) == -1 then redis.call('PEXPIRE', b, ttl) end
  end
  if dttl > 0 then
    local d = KEYS[#KEYS - 1]
    for j = 5 + n, #ARGV, 2 do redis.call('HINCRBY', d, ARGV[j], ARGV[j + 1]) end
    if redis.call('PTTL', d) == -1 then redis.call('PEXPIRE', d, dttl) end
  end
  redis.call('ZADD', ids, now, rid)
  redis.call('PEXPIRE', ids, ittl)
end
local out = {status}
for i = 1, n do
  local b = KEYS[2 * i - 1]
  out[#out + 1] = redis.call('HGET', b, 'spent') or '0'
  out[#out + 1] = redis.call('HGET', b, 'held') or '0'
end
return out
"""


LOCAL_IDS_TTL_MS = 300_000  # an in-process call never times out, so its settle ids need a short memory only
LOCAL_IDS_MAX = 20_000  # settle ids per tenant kept in process (~200 bytes each: ~4 MB); past it the oldest go first
EVICTED: Counter[str] = Counter()  # in-process records dropped for room before their TTL, by table


def _settle_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[str]:
    """Python twin of ``_SETTLE_LUA``; it keeps settle ids at most 5 minutes (``LOCAL_IDS_TTL_MS``) and
    ``LOCAL_IDS_MAX`` per tenant (the oldest dropped first, counted in ``EVICTED["settle_ids"]``).

    In-process calls are never "unknown", so only a repeat within one replay batch can reach it; a
    6-hour id set would cost a single-process gateway gigabytes at a few hundred requests a second.
    """
    n = (len(keys) - 2) // 2
    pairs = args[4 + n:]
    charge = Charge(str(args[0]), int(args[1]), tuple(keys[0:2 * n:2]), tuple(int(t) for t in args[4:4 + n]),
                    keys[-2], int(args[2]), tuple((str(f), int(a)) for f, a in zip(pairs[::2], pairs[1::2], strict=True)))
    reply = settle_now(store, charge, [keys[2 * i + 1] for i in range(n)], keys[-1], int(args[3]), now)
    return [reply[0], *map(str, reply[1:])]


def _levels(store: LocalStore, keys: Sequence[str], status: str) -> list[Any]:
    """``[status, spent, held, ...]`` of the scopes at ``keys`` (0 for a missing one)."""
    out: list[Any] = [status]
    for b in keys:
        bucket = store.get(b)
        out += (0, 0) if bucket is None else (bucket.get("spent", 0), bucket.get("held", 0))
    return out


SETTLE = Script(name="budget_settle", lua=_SETTLE_LUA, local=_settle_local)

# -- read -----------------------------------------------------------------------------------------
_READ_LUA = "local out = {} for i, k in ipairs(KEYS) do out[i] = redis.call('HGETALL', k) end return out"


def _read_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[list[str]]:
    out = []
    for key in keys:
        value = store.get(key) or {}
        out.append([item for field, amount in value.items() for item in (field, str(amount))])
    return out


READ = Script(name="budget_read", lua=_READ_LUA, local=_read_local)


# -- keys and calls -------------------------------------------------------------------------------
def scope_key(prefix: str, tenant: str, scope: str, period_id: str) -> str:
    """``scope`` is ``t`` (the tenant) or ``k|<key name>``."""
    return f"{hash_tag(prefix, tenant)}:bud:{scope}:{period_id}"


def day_key(prefix: str, tenant: str, day: str) -> str:
    return f"{hash_tag(prefix, tenant)}:spend:{day}"


@dataclass(frozen=True, slots=True)
class ScopeArgs:
    """One scope of a reservation, as the reserve script takes it."""

    key: str
    limit: int
    soft: int | None
    enforce: bool
    downgrade: bool
    ttl_ms: int  # 0: never expires (a "total" budget)

    def argv(self) -> list[Any]:
        return [self.limit, "" if self.soft is None else self.soft, int(self.enforce), int(self.downgrade),
                self.ttl_ms]


class Reserved(NamedTuple):
    """A reservation's answer (a named tuple: one is built per request, cheaper than a frozen dataclass)."""

    verdict: str  # main | alt | over
    over: int  # 1-based index of the scope that refused, 0 when admitted
    levels: tuple[tuple[int, int], ...]  # (spent, held) per scope, before this reservation


def _pairs(flat: list[str]) -> dict[str, int]:
    return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


class Ledger:
    """Budget state on one backend (the shared one, or a replica's local fallback).

    ``settled_ttl_s``: how long settle ids are remembered, so a replay within it is a no-op.
    """

    def __init__(self, backend: StateBackend, settled_ttl_s: float = SETTLED_TTL_S) -> None:
        self.backend = backend
        self.settled_ttl_ms = max(1, round(settled_ttl_s * 1000))

    async def reserve(self, scopes: list[ScopeArgs], rid: str, hold_s: float, main: int,
                      alt: int | None) -> Reserved:
        keys, args = reserve_call(scopes, rid, hold_s, main, alt)
        return parse_reserved(await self.backend.run(RESERVE, keys, args))

    async def settle(self, charge: Charge) -> list[tuple[int, int]]:
        """Release ``charge.rid``'s hold, add its cost; returns (spent, held) per scope afterwards."""
        return (await self.settle_once(charge))[1]

    async def settle_once(self, charge: Charge) -> tuple[bool, list[tuple[int, int]]]:
        """``settle``, and whether it applied now (False: this id was settled before, nothing changed)."""
        keys, args = settle_call(charge, self.settled_ttl_ms)
        return parse_settled(await self.backend.run(SETTLE, keys, args))

    async def read(self, keys: list[str]) -> list[dict[str, int]]:
        if not keys:
            return []
        reply = await self.backend.run(READ, keys, [])
        return [_pairs(flat) for flat in reply]


class Charge(NamedTuple):
    """Everything one settle needs, so a failed settle can be replayed later as is.

    ``rid`` is unique per request (the reservation id when there is one): the settle's id. A named
    tuple: one is built per request, at a third of a frozen dataclass's cost.
    """

    rid: str
    cost: int
    scope_keys: tuple[str, ...]
    scope_ttls_ms: tuple[int, ...]
    day_key: str
    day_ttl_ms: int  # 0: nothing to record for the day (the request never reached a model)
    fields: tuple[tuple[str, int], ...]

    @property
    def settled_key(self) -> str:
        return settled_key(self.day_key)


def settled_key(day: str) -> str:
    """The tenant's settled-ids key, under the same hash tag as its day record ``day``."""
    return day.rpartition(":spend:")[0] + ":settled"


# -- calls and replies ----------------------------------------------------------------------------
def reserve_call(scopes: list[ScopeArgs], rid: str, hold_s: float, main: int,
                 alt: int | None) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``RESERVE`` (and of its fused fragment)."""
    keys = [k for s in scopes for k in (s.key, s.key + ":exp")]
    args: list[Any] = [rid, hold_s, main, "" if alt is None else alt]
    for s in scopes:
        args += s.argv()
    return keys, args


def parse_reserved(reply: list[Any]) -> Reserved:
    """A reservation's reply, Redis's strings or a native's ints (one scope, the usual plan, without a loop)."""
    if len(reply) == 4:
        levels: tuple[tuple[int, int], ...] = ((int(reply[2]), int(reply[3])),)
    else:
        levels = tuple([(int(reply[i]), int(reply[i + 1])) for i in range(2, len(reply), 2)])
    return Reserved(str(reply[0]), int(reply[1]), levels)


def settle_call(charge: Charge, settled_ttl_ms: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``SETTLE`` (and of its fused fragment)."""
    keys = [k for key in charge.scope_keys for k in (key, key + ":exp")] + [charge.day_key, charge.settled_key]
    args: list[Any] = [charge.rid, charge.cost, charge.day_ttl_ms, settled_ttl_ms, *charge.scope_ttls_ms]
    for field, amount in charge.fields:
        args += [field, amount]
    return keys, args


def parse_settled(reply: list[Any]) -> tuple[bool, list[tuple[int, int]]]:
    """A settle's reply: whether it applied now, and (spent, held) per scope (one scope without a loop)."""
    if len(reply) == 3:
        return reply[0] == "ok", [(int(reply[1]), int(reply[2]))]
    return reply[0] == "ok", [(int(reply[i]), int(reply[i + 1])) for i in range(1, len(reply) - 1, 2)]


# -- fused-call ops (``gateway.state.fused``) ----------------------------------------------------
RESERVE_FRAGMENT = Fragment("budget_reserve", _RESERVE_FRAGMENT_LUA)
SETTLE_FRAGMENT = Fragment("budget_settle", _SETTLE_LUA)


class ReserveOp:
    """A reservation as one op of the phase's fused call: it runs first, and a later refusal undoes it.

    ``exp_keys``: the scopes' expiry keys (``<key>:exp``), when the caller keeps them built.
    """

    fragment = RESERVE_FRAGMENT
    __slots__ = ("alt", "exp_keys", "hold_s", "main", "rid", "scopes")

    def __init__(self, scopes: Sequence[ScopeArgs], rid: str, hold_s: float, main: int, alt: int | None,
                 exp_keys: Sequence[str] | None = None) -> None:
        self.scopes, self.rid, self.hold_s, self.main, self.alt = scopes, rid, hold_s, main, alt
        self.exp_keys = [s.key + ":exp" for s in scopes] if exp_keys is None else exp_keys

    def redis_call(self) -> tuple[list[str], list[Any]]:
        return reserve_call(self.scopes, self.rid, self.hold_s, self.main, self.alt)

    def native(self, store: MemoryStore, now: float, fx: FusedCtx | None = None) -> list[Any]:
        """``RESERVE`` on the typed scopes; in a fused call (``fx``) a refusal stops the later ops and
        a hold registers its undo."""
        scopes, exp_keys, main, alt = self.scopes, self.exp_keys, self.main, self.alt
        data, deadlines, mono = store.data, store.deadlines, store.monotonic()  # read directly, at one clock reading
        levels: list[int] = []  # spent, held per scope: the reply's tail
        refused = 0  # ``_over`` for ``main``, found as the levels are read
        i = 0
        for s in scopes:
            key, z = s.key, exp_keys[i]
            bucket = data.get(key) if deadlines.get(key, _NEVER) > mono else _gone(store, key)
            exp = data.get(z) if deadlines.get(z, _NEVER) > mono else _gone(store, z)
            if isinstance(exp, ZSet) and exp.scores and exp.at(0)[0] <= now:
                _purge(store, bucket, exp, z, now)  # some reservation expired (the oldest is live nearly always)
            if bucket is None:
                spent = held = 0
            else:
                spent, held = bucket.get("spent", 0), bucket.get("held", 0)
            levels += (spent, held)
            i += 1  # noqa: SIM113 - a counter costs less than ``enumerate`` or ``zip`` (one scope, nearly always)
            if s.enforce and not refused and spent + held + main > s.limit:
                refused = i  # 1-based
        if alt is None:
            amount, use_alt = main, False
        else:
            amount, use_alt, refused = _fit(scopes, levels, main, alt)
        if refused:
            if fx is not None:
                fx.refuse()
            return ["over", refused, *levels]
        rid = self.rid
        field, until = "r:" + rid, now + self.hold_s
        i = 0
        for s in scopes:  # every key is live now, or gone (read above)
            key, z = s.key, exp_keys[i]
            bucket = data.get(key)
            if bucket is None:  # created now (by an earlier scope too, if two share a key): ``local_hash``
                bucket = data[key] = {}
            bucket["held"] = bucket.get("held", 0) + amount
            bucket[field] = amount
            exp = data.get(z)
            if not isinstance(exp, ZSet):  # a sorted set replaces whatever else was there
                exp = data[z] = ZSet()
            exp.add(rid, until)
            if s.ttl_ms > 0:
                ttl_s = s.ttl_ms / 1000
                store.expire(key, ttl_s, mono)
                store.expire(z, ttl_s, mono)
            i += 1  # noqa: SIM113 - a counter costs less than ``enumerate`` or ``zip`` (one scope, nearly always)
        verdict = "alt" if use_alt else "main"
        if fx is not None:
            fx.variant = verdict
            fx.undo += (functools.partial(_unreserve, store, scopes, exp_keys, rid, amount),)
        return [verdict, 0, *levels]


class SettleOp:
    """A settle as one op of the phase's fused call (idempotent by ``charge.rid``, as ``SETTLE``).

    ``exp_keys`` and ``settled``: the keys the settle derives from ``charge``, when the caller keeps them built.
    """

    fragment = SETTLE_FRAGMENT
    __slots__ = ("charge", "exp_keys", "ids_ttl_ms", "settled")

    def __init__(self, charge: Charge, ids_ttl_ms: int, exp_keys: Sequence[str] | None = None,
                 settled: str | None = None) -> None:
        self.charge, self.ids_ttl_ms = charge, ids_ttl_ms
        self.exp_keys = [k + ":exp" for k in charge.scope_keys] if exp_keys is None else exp_keys
        self.settled = charge.settled_key if settled is None else settled

    def redis_call(self) -> tuple[list[str], list[Any]]:
        return settle_call(self.charge, self.ids_ttl_ms)

    def native(self, store: MemoryStore, now: float, fx: FusedCtx | None = None) -> list[Any]:
        """``SETTLE`` on the typed charge: ``[ok|dup, spent, held, ...]`` per scope."""
        return settle_now(store, self.charge, self.exp_keys, self.settled, self.ids_ttl_ms, now)


def settle_now(store: MemoryStore, charge: Charge, exp_keys: Sequence[str], ids_key: str, ids_ttl_ms: int,
               now: float) -> list[Any]:
    """``SETTLE`` on a typed charge (``SettleOp.native``; a settle with no op to share a call with runs
    it as a call of its own, ``MemoryBackend.run_native``): ``[ok|dup, spent, held, ...]`` per scope."""
    rid = charge.rid
    data, deadlines, mono = store.data, store.deadlines, store.monotonic()  # read directly, at one clock reading
    ids = data.get(ids_key) if deadlines.get(ids_key, _NEVER) > mono else _gone(store, ids_key)
    if ids is None:
        ids = data[ids_key] = OrderedDict()  # settle id -> time, oldest first: expiry pops from the front, never scans
    elif rid in ids:
        return _levels(store, charge.scope_keys, "dup")
    ittl_s = (ids_ttl_ms if ids_ttl_ms < LOCAL_IDS_TTL_MS else LOCAL_IDS_TTL_MS) / 1000
    cutoff = now - ittl_s
    while ids and next(iter(ids.values())) <= cutoff:
        ids.popitem(last=False)
    while len(ids) >= LOCAL_IDS_MAX:
        ids.popitem(last=False)
        EVICTED["settle_ids"] += 1
    out: list[Any] = ["ok"]
    scope_keys = charge.scope_keys
    if scope_keys:  # none for a tenant without a budget
        cost, field, ttls = charge.cost, "r:" + rid, charge.scope_ttls_ms
        i = 0
        for b in scope_keys:
            bucket = data.get(b) if deadlines.get(b, _NEVER) > mono else _gone(store, b)
            if bucket is None:
                bucket = data[b] = {}
            held = bucket.pop(field, None)
            if held is not None:
                bucket["held"] = bucket.get("held", 0) - held
            z = exp_keys[i]
            exp = data.get(z) if deadlines.get(z, _NEVER) > mono else _gone(store, z)
            if isinstance(exp, ZSet):  # ZREM; an emptied set stays in memory for the next reservation (Redis drops it)
                exp.remove(rid)
            bucket["spent"] = bucket.get("spent", 0) + cost
            if ttls[i] > 0 and b not in deadlines:  # ``expire_nx`` on a live key
                store.expire(b, ttls[i] / 1000, mono)
            i += 1  # noqa: SIM113 - a counter costs less than ``enumerate`` or ``zip`` (one scope, nearly always)
        if len(scope_keys) == 1:  # the usual plan: the one bucket just written
            out += (bucket.get("spent", 0), bucket.get("held", 0))
        else:
            for b in scope_keys:  # read after every write (two scopes may share a key), as the script does
                bucket = data[b]
                out += (bucket.get("spent", 0), bucket.get("held", 0))
    if charge.day_ttl_ms > 0:
        day_key = charge.day_key
        day = data.get(day_key) if deadlines.get(day_key, _NEVER) > mono else _gone(store, day_key)
        if day is None:
            day = data[day_key] = {}
        get = day.get
        for name, amount in charge.fields:
            day[name] = get(name, 0) + amount
        if day_key not in deadlines:  # ``expire_nx`` on a live key
            store.expire(day_key, charge.day_ttl_ms / 1000, mono)
    ids[rid] = now
    store.expire(ids_key, ittl_s, mono)
    return out
