"""The memory backend's own limiter structures: what its natives keep instead of Redis-shaped sorted sets.

On the memory backend (one process) a request log (``R``) never loses a member by name, and an
unleased concurrency slot (``lease`` ``None``) never expires: a request log needs only its admission
times (``RequestLog``), the slots only their tokens (a ``set``), and a token log (``T``, read by
``P``) keeps its weights and their total in the same object (``TokenLog``), where Redis has a sorted
set and a hash. ``acquire_unleased`` is ``window.acquire_entries`` with ``lease`` ``None`` on those:
the same replies, keys, expiries and "an emptied key goes" (a token log's weights key is never
written: its weights go with the log). One thing a times-only log cannot mirror: a token committed
to the same request log twice counts twice (ZADD would move it). The limiter never does that: every
request has a new token and takes each of its request logs once (a refused call writes nothing).
Entries with equal times may sit in another order than Redis's (score, member): nothing answered
depends on it.

A log that a Script twin wrote (a ``ZSet``: tests mixing the two on one store) sends the call to
``acquire_entries`` as it is; the twins read these structures back as sorted sets (``window._zset``),
and release and settle both kinds (``window.release_slot``, ``window.settle``). ``release_all``
frees and settles the native structures itself and hands a twin's to those functions.

These run on every request: they read the store's dicts directly (``MemoryStore.data``), under its
rules, rather than calling it per key.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import floor
from typing import Any

from gateway.ratelimit.window import TTL_PAD_MS, acquire_entries, release_slot, settle
from gateway.state.memory import MemoryStore
from gateway.state.zset import RequestLog, TokenLog, ZSet

Entry = tuple[str, int, int, str, str]  # kind, limit, weight, key, weights key ("" unless T/P)
_NATIVE = {"R": RequestLog, "C": set, "T": TokenLog, "P": TokenLog}  # each kind's structure in the store
_NEVER = float("inf")  # the deadline of a key with none


class _NoLog:
    """An absent token log as a peek reads it: empty, never stored nor written (no ``TokenLog`` built)."""

    __slots__ = ()
    times: tuple[int, ...] = ()
    head = total = 0


_NO_LOG = _NoLog()


def acquire_unleased(store: MemoryStore, token: str, force: bool, window: int,
                     specs: Sequence[Entry], now: float) -> list[int]:
    """``acquire_entries(..., lease=None, ...)`` on the native structures: checks, then commits if all fit.

    A log is in the store exactly while it holds entries (an emptied one is deleted, a new one is
    stored on its first entry), so what Redis's reply reads from "the key exists" is read from the log.
    The store's dicts are read directly, under its rules, at one clock reading (``MemoryStore.data``):
    every request comes here, and a call per key would cost more than the check itself.

    The common case is checked here: every entry fits, and its log is stored, alive and of its kind
    (or absent: a new log no other entry names). Anything else (an entry over its limit, an expired
    key, another kind of value, a twin's log, a new log two entries name) is checked again from the
    start by ``_check_all``, the general case: nothing here writes but a trim, which a second trim to
    the same cutoff leaves as it is, and a log that a trim empties is deleted (and handed over, for the
    entries that name its key to share it, as they would have).
    """
    t = floor(now * 1_000_000 + 0.5)  # ``window.now_us``, inlined
    cutoff = t - window
    data, deadlines, mono = store.data, store.deadlines, store.monotonic()
    found: list[Any] | None = []  # each entry's log
    out: list[int] = [1, 0]  # status and retry, then (used, reset, over) per entry: reset filled in later
    new: list[str] = []  # the keys of new logs
    emptied: dict[str, Any] = {}  # a log the check's trim emptied (and deleted), for ``_check_all`` to share
    for kind, limit, weight, key, _hkey in specs:
        log = data.get(key)
        if kind == "C":
            if type(log) is set and log:  # stored, so held (an emptied set is deleted), with no expiry
                n = len(log)
            elif log is None and key not in new:
                log, n = set(), 0
                new.append(key)
            else:
                found = None
                break
        elif type(log) is _NATIVE[kind] and deadlines.get(key, _NEVER) > mono:  # stored and alive
            times, head = log.times, log.head
            size = len(times)
            if size > head and times[head] > cutoff:  # nothing left the window: ``trim``'s answer
                n = size - head if kind == "R" else log.total
            elif size == head:  # stored yet empty (only a failed call leaves one): as it is read in general
                found = None
                break
            else:  # something left the window: trim
                n = log.trim(cutoff)
                if len(times) == log.head:  # emptied: its key goes, as ``_check_all`` does
                    store.delete(key)
                    emptied[key] = log
                    found = None
                    break
        elif log is None and key not in new:  # nothing stored: a new log (a peek reads an empty one)
            log, n = (_NO_LOG if kind == "P" else _NATIVE[kind]()), 0
            new.append(key)
        else:
            found = None
            break
        if n + weight > limit and kind != "P":
            found = None
            break
        found.append(log)
        out += (n, 0, 0)
    if found is None:
        checked = _check_all(store, specs, t, cutoff, window, mono, emptied)
        if checked is None:  # a twin's log: nothing is written yet, so the twin does it all
            return acquire_entries(store, token, force, window, None, specs, now)
        found, out, ok, retry = checked
        out[0] = 1 if ok else 2 if force else 0
        out[1] = -1 if retry < 0 else -(-retry // 1000)
    if out[0] and not _commit(store, token, specs, found, out, t, window, mono):
        return out  # every entry's reset is its commit's
    i = 3  # each log's reset, read once every entry is committed
    for log in found:
        if type(log) is not set and len(log.times) > log.head:
            reset = log.times[-1] + window - t
            out[i] = -(-reset // 1000) if reset > 0 else 0
        i += 3
    return out


def _check_all(store: MemoryStore, specs: Sequence[Entry], t: int, cutoff: int, window: int, mono: float,
               logs: dict[str, Any]) -> tuple[list[Any], list[int], bool, int] | None:
    """``acquire_unleased``'s check in general: each key's log read once and shared by the entries that
    name it (``logs``: each key's log; on entry, one that ``acquire_unleased``'s trim emptied and
    deleted), an expired or emptied key deleted, another kind of value replaced. The logs, the reply
    so far, whether all fit and the retry (microseconds); None for a twin's log (or one key named
    under two kinds, as a twin's one sorted set would be), which the twin must take over."""
    data, deadlines = store.data, store.deadlines
    found: list[Any] = []
    out: list[int] = [0, 0]
    ok, retry = True, 0
    for kind, limit, weight, key, _hkey in specs:
        cls = _NATIVE[kind]
        log = logs.get(key)
        if log is None:
            deadline = deadlines.get(key)
            if deadline is not None and deadline <= mono:
                store.delete(key)  # expired: gone, as ``get`` finds it
            else:
                log = data.get(key)
            if type(log) is not cls:
                if log is not None:
                    if type(log) is ZSet:
                        return None
                    store.delete(key)  # another kind of value: replaced, as the twin replaces it
                    log = cls()
                else:  # nothing stored: a new log (a peek reads an empty one), nothing to trim
                    log = _NO_LOG if kind == "P" else cls()
            logs[key] = log
        elif type(log) is not cls:  # one key under two kinds (a twin shares one sorted set)
            return None
        found.append(log)
        if kind == "C":
            n = len(log)
            if not n and key in data:
                store.delete(key)  # emptied: Redis has no empty set
        else:
            times, head = log.times, log.head
            if head < len(times) and times[head] <= cutoff:  # something left the window: trim
                n = log.trim(cutoff)
                if len(times) == log.head and key in data:
                    store.delete(key)
            elif kind == "R":  # ``trim``'s answer when nothing goes
                n = len(times) - head
            else:
                n = log.total
        if kind == "P" or n + weight <= limit:
            out += (n, 0, 0)
            continue
        out += (n, 0, 1)
        ok = False
        if kind != "C":  # a slot frees on a completion: no time can be promised
            wait = _wait(log, kind, n + weight - limit, weight > limit, window, t)
            retry = -1 if wait < 0 or retry < 0 else max(retry, wait)
    return found, out, ok, retry


def _wait(log: RequestLog | TokenLog, kind: str, excess: int, never: bool, window: int, t: int) -> int:
    """Microseconds until ``excess`` more fits in the log's window (-1: ``never``, heavier than the limit)."""
    if never:
        return -1
    if kind == "R":
        return log.times[log.head + excess - 1] + window - t
    return log.wait_for(excess, window, t)  # type: ignore[union-attr]


def _commit(store: MemoryStore, token: str, specs: Sequence[Entry], found: list[Any], out: list[int], t: int,
            window: int, mono: float) -> bool:
    """Take every entry but the peeks: its log (stored if it was empty), the log's expiry (slots have
    none; from ``mono``, the call's clock reading), a reservation's weight; each entry's ``used`` in the
    reply ``out`` becomes the count after, and its ``reset`` the log's once taken. True when a peek is
    left, whose reset must be read after all (its log may be another entry's)."""
    data = store.data
    ttl_s = (window // 1000 + TTL_PAD_MS) / 1000
    full = -(-window // 1000)  # the reset of a log whose newest entry is at ``t``
    peeked = False
    i = -1
    for (kind, _limit, weight, key, _hkey), log in zip(specs, found, strict=True):
        i += 3  # the entry's ``used`` in the reply
        if kind == "R":
            times = log.times
            if not times:  # a new log (an emptied one has no times left: ``zset._forget``)
                data[key] = log
            if not times or times[-1] <= t:  # ``RequestLog.add``'s common case: an append
                times.append(t)
                out[i + 1] = full
            else:
                log.add(t)
                out[i + 1] = -(-(times[-1] + window - t) // 1000)  # the newest entry, after ``t``
            out[i] += 1
        elif kind == "T":
            times, weights = log.times, log.weights
            if not times:
                data[key] = log
            if token not in weights and (not times or times[-1] <= t):  # ``TokenLog.add``'s common case
                times.append(t)
                log.tokens.append(token)
                weights[token] = weight
                out[i] = log.total = log.total + weight
                out[i + 1] = full
            else:
                out[i] = log.add(token, t, weight)
                out[i + 1] = -(-(times[-1] + window - t) // 1000)  # the newest entry, at ``t`` or later: > 0
        elif kind == "C":
            if not log:
                data[key] = log  # absent, so with no expiry: ``store.set(key, log)``
            log.add(token)
            out[i] += 1
            continue
        else:
            peeked = True
            continue
        store.expire(key, ttl_s, mono)
    return peeked


def release_all(store: MemoryStore, token: str, slots: Sequence[str], tokens: Sequence[tuple[str, str]], actual: int,
                now: float) -> int:
    """Free ``token``'s ``slots`` and settle its reservations in ``tokens`` (log, weights keys) to
    ``actual``: ``window.release_slot`` and ``window.settle`` per key, with the natives' own structures
    read from the store directly (``acquire_unleased``); a twin's sorted sets go to those functions."""
    data, deadlines = store.data, store.deadlines
    for key in slots:
        held = data.get(key)
        if type(held) is set and key not in deadlines:  # a native slot set: it never expires
            if token in held:
                held.discard(token)
                if not held:
                    del data[key]  # emptied: Redis has no empty set
        else:
            release_slot(store, key, token)
    for key, hkey in tokens:
        log = data.get(key)
        deadline = deadlines.get(key)
        if type(log) is TokenLog and (deadline is None or store.monotonic() < deadline):
            log.settle(token, actual)
        else:
            settle(store, key, hkey, token, actual)
    return 1
