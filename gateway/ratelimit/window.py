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
crashed replica's slots simply expire (the live replica renews its leases, ``renew``).

Each function here mirrors a Lua body in ``scripts.py`` operation for operation, on a ``LocalStore``
holding ``ZSet`` and ``dict`` values, and returns what the Lua returns (lists of ints). Redis deletes
an emptied sorted set, and so do these twins.

Entry kinds in a script call: ``R`` request log (weight 1), ``C`` concurrency lease, ``T`` token
reservation (weight = tokens; keys: log, weights hash), ``P`` token peek (read only, for headers).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

from gateway.state.base import LocalStore

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


class ZSet:
    """The sorted-set operations the twins need, ordered as Redis orders them (score, then member).

    A window log loses its oldest entries on nearly every call, so ``pop_through`` only moves a start
    index (``_head``) over the dead prefix and compacts the list once that prefix is half of it:
    trimming costs O(removed) amortised instead of shifting a list of up to a minute's entries.
    """

    __slots__ = ("_head", "_items", "scores")

    def __init__(self) -> None:
        self._items: list[tuple[int, str]] = []  # sorted from ``_head`` on; before it: already removed
        self._head = 0
        self.scores: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items) - self._head

    @property
    def items(self) -> list[tuple[int, str]]:
        """The live ``(score, member)`` pairs in order (a copy: for the rare paths and tests)."""
        return self._items[self._head:]

    def at(self, index: int) -> tuple[int, str]:
        """The ``index``-th live pair in order (``-1``: the newest)."""
        return self._items[self._head + index if index >= 0 else index]

    def add(self, member: str, score: int, only_existing: bool = False) -> bool:
        old = self.scores.get(member)
        if old is None and only_existing:
            return False
        if old is not None:
            self._items.pop(bisect.bisect_left(self._items, (old, member), self._head))
        bisect.insort(self._items, (score, member), self._head)
        self.scores[member] = score
        return True

    def remove(self, member: str) -> bool:
        score = self.scores.pop(member, None)
        if score is None:
            return False
        self._items.pop(bisect.bisect_left(self._items, (score, member), self._head))
        return True

    def pop_through(self, max_score: int) -> list[str]:
        """ZRANGEBYSCORE -inf max + ZREMRANGEBYSCORE -inf max: the members removed, oldest first."""
        items, head = self._items, self._head
        cut = bisect.bisect_right(items, (max_score, "\U0010ffff"), head)
        if cut == head:
            return []
        gone = [member for _, member in items[head:cut]]
        for member in gone:
            del self.scores[member]
        if 2 * cut >= len(items):  # the dead prefix is half the list or more: drop it for real
            del items[:cut]
            cut = 0
        self._head = cut
        return gone


@dataclass(slots=True)
class _Entry:
    kind: str
    limit: int
    weight: int
    key: str
    hkey: str = ""
    used: int = 0
    over: bool = False
    retry_us: int = 0
    zs: ZSet = None  # type: ignore[assignment]  # the key's log, read once per call (see ``acquire``)


def _zset(store: LocalStore, key: str) -> ZSet:
    found = store.get(key)
    return found if isinstance(found, ZSet) else ZSet()


def _save(store: LocalStore, key: str, zs: ZSet, ttl_ms: int | None = None) -> None:
    """Write back like Redis: an empty set disappears; a ttl only when given (PEXPIRE)."""
    if not zs:
        store.delete(key)
        return
    if store.get(key) is not zs:
        store.set(key, zs)
    if ttl_ms is not None:
        store.expire(key, ttl_ms / 1000)


def _trim_tokens(store: LocalStore, e: _Entry, cutoff: int) -> int:
    zs = e.zs
    weights = store.get(e.hkey)
    old = zs.pop_through(cutoff)
    _save(store, e.key, zs)
    if not zs:
        store.delete(e.hkey)
        return 0
    if not isinstance(weights, dict):
        return 0
    freed = sum(int(weights.pop(member, 0)) for member in old)
    if freed:
        weights[SUM_FIELD] = int(weights.get(SUM_FIELD, 0)) - freed
    return int(weights.get(SUM_FIELD, 0))


def _token_retry(store: LocalStore, e: _Entry, need: int, window: int, now: int) -> int:
    weights = store.get(e.hkey) or {}
    acc = 0
    for score, member in e.zs.items:
        acc += int(weights.get(member, 0))
        if acc >= need:
            return score + window - now
    return 0


def _check(store: LocalStore, e: _Entry, window: int, now: int) -> None:
    """Trim the entry's key to the window (or live leases) and decide whether ``weight`` fits."""
    if e.kind == "C":
        zs = e.zs
        zs.pop_through(now)
        _save(store, e.key, zs)
        e.used = len(zs)
    elif e.kind == "R":
        zs = e.zs
        zs.pop_through(now - window)
        _save(store, e.key, zs)
        e.used = len(zs)
    else:
        e.used = _trim_tokens(store, e, now - window)
    e.over = e.kind != "P" and e.used + e.weight > e.limit
    if not e.over or e.kind == "C":
        return  # a slot frees on a completion: no time can be promised
    if e.weight > e.limit:
        e.retry_us = -1
    elif e.kind == "R":
        score, _ = e.zs.at(e.used + e.weight - e.limit - 1)
        e.retry_us = score + window - now
    else:
        e.retry_us = _token_retry(store, e, e.used + e.weight - e.limit, window, now)


def _commit(store: LocalStore, e: _Entry, token: str, window: int, lease: int, now: int) -> None:
    if e.kind == "P":
        return
    zs = e.zs
    if e.kind == "C":
        zs.add(token, now + lease)
        _save(store, e.key, zs, lease // 1000 + TTL_PAD_MS)
        e.used += 1
        return
    zs.add(token, now)
    ttl_ms = window // 1000 + TTL_PAD_MS
    _save(store, e.key, zs, ttl_ms)
    if e.kind == "R":
        e.used += 1
        return
    weights = store.get(e.hkey)
    if not isinstance(weights, dict):
        weights = {}
        store.set(e.hkey, weights)
    weights[token] = e.weight
    weights[SUM_FIELD] = e.used = int(weights.get(SUM_FIELD, 0)) + e.weight
    store.expire(e.hkey, ttl_ms / 1000)


def _reset_us(store: LocalStore, e: _Entry, window: int, now: int) -> int:
    """Time until the log is empty again (OpenAI's "reset to its initial state")."""
    if e.kind == "C":
        return 0
    zs = e.zs
    return zs.at(-1)[0] + window - now if zs else 0


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


def acquire_entries(store: LocalStore, token: str, force: bool, window: int, lease: int,
                    specs: list[tuple[str, int, int, str, str]], now: float) -> list[int]:
    """``acquire`` on typed entries ``(kind, limit, weight, key, weights key or "")``: the native form."""
    t = now_us(now)
    entries: list[_Entry] = []
    # Each key's log is read from the store once per call and shared by its entries: the store then
    # holds that very object, or nothing when it emptied (and an empty log is as good as a new one).
    logs: dict[str, ZSet] = {}
    ok, retry = True, 0
    for kind, limit, weight, key, hkey in specs:
        e = _Entry(kind, limit, weight, key, hkey)
        zs = logs.get(key)
        if zs is None:
            zs = logs[key] = _zset(store, key)
        e.zs = zs
        _check(store, e, window, t)
        if e.over:
            ok = False
            retry = -1 if e.retry_us < 0 or retry < 0 else max(retry, e.retry_us)
        entries.append(e)
    status = 1 if ok else 2 if force else 0
    if status:
        for e in entries:
            _commit(store, e, token, window, lease, t)
    out = [status, -1 if retry < 0 else ceil_ms(retry)]
    for e in entries:
        out += [e.used, ceil_ms(_reset_us(store, e, window, t)), int(e.over)]
    return out


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
            settle_tokens(store, keys[ki + 1], token, int(args[i + 1]))
            ki += 2
    return 1


def release_slot(store: LocalStore, key: str, token: str) -> None:
    """Free one concurrency slot (ZREM)."""
    zs = _zset(store, key)
    if zs.remove(token):
        _save(store, key, zs)


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
