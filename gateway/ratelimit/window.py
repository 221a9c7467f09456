"""The limiter's maths: an exact sliding window log, and concurrency leases (the Python twins).

Choice: a **sliding window log**. Every admission is one sorted-set entry scored by its admission
time in integer microseconds (tokens carry their weight in a hash next to it). A request of weight
``w`` is admitted when the weight admitted in the half-open window ``(now - 60 s, now]`` plus ``w``
stays within the limit. Error bound: **zero** — no 60-second interval, wherever it starts, ever
holds more than ``limit`` requests (or tokens reserved), unlike a fixed window (2x at a boundary)
or GCRA with a full burst (up to ~2x per 60 s). The time to the next admission is exact too: the
moment enough of the oldest entries leave the window, to the microsecond. The price is memory:
O(admissions in the last minute) per limited key (at most ``rpm`` entries for a request limit),
and a rejection that needs many token entries to expire walks them (only on the reject path).

Concurrency is a sorted set of request tokens scored by lease expiry: released on completion, and a
crashed replica's slots simply expire (the live replica renews its leases, ``renew``). On the memory
backend (one process: the store dies with the holder) the natives take slots with no lease at all,
and keep every log in a structure of their own (``gateway.ratelimit.native``), which the functions
here read back as sorted sets.

Each function here mirrors a Lua body in ``scripts.py`` operation for operation, on a ``LocalStore``
holding ``ZSet`` and ``dict`` values, and returns what the Lua returns (lists of ints). Redis deletes
an emptied sorted set, and so do these twins.

Entry kinds in a script call: ``R`` request log (weight 1), ``C`` concurrency lease, ``T`` token
reservation (weight = tokens; keys: log, weights hash), ``P`` token peek (read only, for headers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gateway.state.base import LocalStore
from gateway.state.zset import TokenLog, ZSet, as_zset

WINDOW_US = 60_000_000  # rpm and tpm are per minute
LEASE_US = 30_000_000  # a concurrency slot lives this long unless renewed
SUM_FIELD = "~sum"  # the running total in a token log's weights hash (never a request token)
TTL_PAD_MS = 1000  # keys outlive their newest entry by this much
PAGE = 100  # entries read per step when walking a token log


def now_us(now: float) -> int:
    """Integer microseconds: exact in doubles, so Lua and Python agree to the unit."""
    return math.floor(now * 1_000_000 + 0.5)


def ceil_ms(us: int | float) -> int:
    return 0 if us <= 0 else math.ceil(us / 1000)


def _zset(store: LocalStore, key: str, hkey: str = "") -> ZSet:
    found = store.get(key)
    return found if isinstance(found, ZSet) else _as_zset(store, key, found, hkey)


def _as_zset(store: LocalStore, key: str, found: Any, hkey: str = "") -> ZSet:
    """A key that holds no sorted set, as one: a native log (``native``) read back and stored in its
    place (its expiry kept; a token log's weights as the hash at ``hkey``), or a new empty set."""
    zs = as_zset(found)
    if zs is None:
        return ZSet()
    store.set(key, zs)
    if isinstance(found, TokenLog) and hkey and zs:
        weights: dict[str, int] = {**found.weights, SUM_FIELD: found.total}
        ttl = store.ttl(key)
        store.set(hkey, weights, ttl if ttl is not None and ttl > 0 else None)
    return zs


def _save(store: LocalStore, key: str, zs: ZSet, ttl_ms: int | None = None) -> None:
    """Write back like Redis: an empty set disappears; a ttl only when given (PEXPIRE)."""
    if not zs:
        store.delete(key)
        return
    if store.get(key) is not zs:
        store.set(key, zs)
    if ttl_ms is not None:
        store.expire(key, ttl_ms / 1000)


def _token_retry(store: LocalStore, zs: ZSet, hkey: str, need: int, window: int, now: int) -> int:
    weights = store.get(hkey) or {}
    acc = 0
    for score, member in zs.items:
        acc += int(weights.get(member, 0))
        if acc >= need:
            return score + window - now
    return 0


def acquire(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[int]:
    """Check every entry; commit all of them only if all fit (or ``force``: shadow mode).

    ARGV: token, force (0|1), window_us, lease_us, then (kind, limit, weight) per entry; KEYS: one per
    entry, two for T and P. Returns ``[status, retry_ms, (used, reset_ms, over) per entry]`` where
    status is 1 admitted, 0 rejected (nothing written), 2 over a limit but committed (force);
    retry_ms is exact to the next admission, -1 when the request can never fit.
    """
    specs: list[tuple[str, int, int, str, str]] = []
    ki = 0
    for i in range(4, len(args), 3):
        kind = str(args[i])
        hkey = keys[ki + 1] if kind in ("T", "P") else ""
        specs.append((kind, int(args[i + 1]), int(args[i + 2]), keys[ki], hkey))
        ki += 2 if hkey else 1
    return acquire_entries(store, str(args[0]), str(args[1]) == "1", int(args[2]), int(args[3]), specs, now)


def acquire_entries(store: LocalStore, token: str, force: bool, window: int, lease: int | None,
                    specs: Sequence[tuple[str, int, int, str, str]], now: float) -> list[int]:
    """``acquire`` on typed entries ``(kind, limit, weight, key, weights key or "")``: the native form.

    Each entry is trimmed and checked, then (only if all fit, or ``force``) committed; written out flat:
    this runs on every request (twice on a miss), so no per-entry objects and no store round trips that
    cannot change anything. ``lease`` ``None`` (the memory backend's natives only: one process, where
    a slot cannot outlive its holder) takes slots with no lease: held until released, never renewed.
    """
    t = now_us(now)
    # Each key's log is read from the store once per call and shared by its entries; ``stored`` says
    # whether the store holds that very object (it holds nothing for a new log or one that emptied).
    logs: dict[str, ZSet] = {}
    stored: dict[str, bool] = {}
    used: list[int] = []
    over: list[bool] = []
    ok, retry = True, 0
    for kind, limit, weight, key, hkey in specs:
        zs = logs.get(key)
        if zs is None:
            found = store.get(key)
            zs = logs[key] = found if isinstance(found, ZSet) else _as_zset(store, key, found, hkey)
        if kind == "C":
            n = zs.trim(t)
            held = n > 0
        elif kind == "R":
            n = zs.trim(t - window)
            held = n > 0
        else:
            n = _trim_log(store, zs, hkey, t - window)
            held = bool(zs)
        stored[key] = held
        if not held:
            store.delete(key)  # emptied (or never there): Redis has no empty set
        hit = kind != "P" and n + weight > limit
        used.append(n)
        over.append(hit)
        if hit:
            ok = False
            if kind != "C":  # a slot frees on a completion: no time can be promised
                if weight > limit:
                    wait = -1
                elif kind == "R":
                    wait = zs.at(n + weight - limit - 1)[0] + window - t
                else:
                    wait = _token_retry(store, zs, hkey, n + weight - limit, window, t)
                retry = -1 if wait < 0 or retry < 0 else max(retry, wait)
    status = 1 if ok else 2 if force else 0
    if status:
        window_ttl_s = (window // 1000 + TTL_PAD_MS) / 1000
        for i, (kind, _limit, weight, key, hkey) in enumerate(specs):
            if kind == "P":
                continue
            zs = logs[key]
            zs.add(token, t if kind != "C" else t + lease if lease is not None else math.inf)
            if not stored[key]:
                store.set(key, zs)
                stored[key] = True
            if kind == "C":
                if lease is not None:
                    store.expire(key, (lease // 1000 + TTL_PAD_MS) / 1000)
                used[i] += 1
                continue
            store.expire(key, window_ttl_s)
            if kind == "R":
                used[i] += 1
                continue
            used[i] = reserve_tokens(store, hkey, token, weight, window_ttl_s)
    out = [status, -1 if retry < 0 else ceil_ms(retry) if retry else 0]
    for i, (kind, _limit, _weight, key, _hkey) in enumerate(specs):
        reset = ceil_ms(logs[key].at(-1)[0] + window - t) if kind != "C" and stored[key] else 0
        out += (used[i], reset, 1 if over[i] else 0)
    return out


def reserve_tokens(store: LocalStore, hkey: str, token: str, weight: int, ttl_s: float) -> int:
    """Record a reservation's weight in its log's weights hash (HSET, HINCRBY, PEXPIRE): the new total."""
    weights = store.get(hkey)
    if not isinstance(weights, dict):
        weights = {}
        store.set(hkey, weights)
    weights[token] = weight
    weights[SUM_FIELD] = total = int(weights.get(SUM_FIELD, 0)) + weight
    store.expire(hkey, ttl_s)
    return total


def _trim_log(store: LocalStore, zs: ZSet, hkey: str, cutoff: int) -> int:
    """A token log trimmed to the window (its weights hash with it): the weight left in the window."""
    old = zs.pop_through(cutoff)
    if not zs:
        store.delete(hkey)
        return 0
    weights = store.get(hkey)
    if not isinstance(weights, dict):
        return 0
    if old:
        freed = sum(int(weights.pop(member, 0)) for member in old)
        if freed:
            weights[SUM_FIELD] = int(weights.get(SUM_FIELD, 0)) - freed
    return int(weights.get(SUM_FIELD, 0))


def release(store: LocalStore, keys: list[str], args: list[Any], now: float) -> int:
    """Free concurrency slots (``C``) and set token reservations to their real use (``T``, n).

    ARGV: token, then (kind, value) pairs; KEYS: one per C, two per T. A reservation that already
    left the window is not recreated.
    """
    token, ki = str(args[0]), 0
    for i in range(1, len(args), 2):
        if str(args[i]) == "C":
            release_slot(store, keys[ki], token)
            ki += 1
        else:
            settle(store, keys[ki], keys[ki + 1], token, int(args[i + 1]))
            ki += 2
    return 1


def release_slot(store: LocalStore, key: str, token: str) -> None:
    """Free one concurrency slot (ZREM; the emptied set goes, as in Redis): a sorted set's, or an
    unleased one of the memory backend's natives (a set of tokens, ``native``)."""
    zs = store.get(key)
    if type(zs) is set:
        if token in zs:
            zs.discard(token)
            if not zs:
                store.delete(key)
    elif isinstance(zs, ZSet) and zs.remove(token) and not zs:
        store.delete(key)


def settle(store: LocalStore, key: str, hkey: str, token: str, actual: int) -> None:
    """``settle_tokens`` for the log at ``key``: a native token log keeps its weights itself."""
    log = store.get(key)
    if type(log) is TokenLog:
        log.settle(token, actual)
    else:
        settle_tokens(store, hkey, token, actual)


def settle_tokens(store: LocalStore, hkey: str, token: str, actual: int) -> None:
    """Set a token reservation to its real use; one that already left the window stays gone."""
    weights = store.get(hkey)
    if isinstance(weights, dict) and token in weights:
        delta = actual - int(weights[token])
        weights[token] = actual
        if delta:
            weights[SUM_FIELD] = int(weights.get(SUM_FIELD, 0)) + delta


def renew(store: LocalStore, keys: list[str], args: list[Any], now: float) -> int:
    """Push the leases of this replica's live slots forward; returns how many were still held.

    ARGV: lease_us, then per key: count, tokens...
    """
    lease, t, i, renewed = int(args[0]), now_us(now), 1, 0
    for key in keys:
        n = int(args[i])
        zs = _zset(store, key)
        for member in args[i + 1 : i + 1 + n]:
            renewed += zs.add(str(member), t + lease, only_existing=True)
        i += 1 + n
        if zs:
            _save(store, key, zs, lease // 1000 + TTL_PAD_MS)
    return renewed
