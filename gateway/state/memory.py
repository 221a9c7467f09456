"""In-process state: the embedded single-replica backend.

Atomic without locks: nothing here awaits, so a Script's Python twin runs to completion between two
event-loop steps. Expiry is lazy (checked on access) plus an amortised sweep off a heap of
deadlines, so keys nobody reads again don't pile up. Script results go through ``to_reply`` so the
memory backend hands back exactly what Redis would for the same Lua value.

Logs (the dead-letter queue) and, given ``dlq_path``, the JSONL journal behind them are in ``journal``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from gateway.clock import SYSTEM_CLOCK, Clock, monotonic_of, time_of
from gateway.state.base import Script, StateError
from gateway.state.fused import FusedCtx, FusedOp
from gateway.state.journal import LOG_FULL, Logs, format_id, parse_id

__all__ = [
    "LOG_FULL",
    "MemoryBackend",
    "MemoryStore",
    "check_script_args",
    "format_id",
    "parse_id",
    "to_reply",
]

_SWEEP_BATCH = 32  # heap entries looked at per operation at most: bounds the cost of one sweep
_MIN_STALE = 1024  # stale heap entries tolerated before the heap is rebuilt


_ARG_TYPES = frozenset({int, float, str, bytes})  # exact types that always pass (bool is not int here)
_REPLY_ITEMS = frozenset({int, str})  # exact types ``to_reply`` keeps as they are


def check_script_args(args: list[Any]) -> None:
    """Refuse what Redis can't carry as ARGV, so a twin can't quietly accept what Lua never gets."""
    if _ARG_TYPES.issuperset(map(type, args)):  # hot path: one C-level pass; subclasses go the long way
        return
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, int | float | str | bytes):
            raise TypeError(f"script args must be int, float, str or bytes, not {type(arg).__name__}")


def to_reply(value: Any) -> Any:
    """Convert a Python twin's result the way Redis converts a Lua value into a reply.

    Numbers become ints (floats truncate toward zero), ``True`` 1, ``False``/``None`` nil, bytes
    str; a list stops at its first ``None`` (a Lua array ends at its first nil).
    """
    kind = type(value)
    if kind is int or kind is str:  # hot path: twins mostly return Redis-shaped values already
        return value
    if (kind is list or kind is tuple) and _REPLY_ITEMS.issuperset(map(type, value)):
        return list(value)  # a flat list of ints/strs converts to a copy of itself
    if value is None or value is False:
        return None
    if value is True:
        return 1
    if isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        out = []
        for item in value:
            if item is None:
                break
            out.append(to_reply(item))
        return out
    raise TypeError(f"a script can't return {type(value).__name__}")


class MemoryStore:
    """The ``LocalStore`` of Script twins: Python values with deadlines on ``clock.monotonic()``.

    ``set(key, value)`` without a ttl keeps the key's expiry, like INCRBY/HSET in Lua (what twins
    usually mirror); ``MemoryBackend.set`` clears it first, like SET.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        # Public for the natives that run on every request (``gateway.ratelimit.native``, the budget's
        # ``gateway.budget.ledger``), which read them directly at one clock reading, under the rules of
        # ``get`` and ``set``: a key past its deadline is gone; a deadline only exists for a key in
        # ``data``; deadlines are set by ``expire`` (which takes that reading as ``now``).
        self.monotonic = monotonic_of(clock)  # read dozens of times a request
        self.data: dict[str, Any] = {}
        self.deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (deadline, key); stale entries are skipped
        # key -> the deadline of its one live heap entry; every key of ``deadlines`` has one, at or before
        # its deadline. A later deadline (an expiry pushed forward, what twins do on every call) pushes
        # nothing: the sweep finds the key still alive and queues it again.
        self._queued: dict[str, float] = {}

    def __len__(self) -> int:
        """Keys held, expired but not yet swept included: what the sweep keeps bounded."""
        return len(self.data)

    def _alive(self, key: str) -> bool:
        deadline = self.deadlines.get(key)
        if deadline is not None and deadline <= self.monotonic():
            self.delete(key)
            return False
        return key in self.data

    def get(self, key: str, default: Any = None) -> Any:
        deadline = self.deadlines.get(key)  # ``_alive`` inlined: twins call this dozens of times a request
        if deadline is not None and deadline <= self.monotonic():
            self.delete(key)
            return default
        return self.data.get(key, default)

    def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        if ttl_s is not None and ttl_s <= 0:
            self.delete(key)
            return
        deadline = self.deadlines.get(key)  # ``_alive`` inlined: an expired key must not lend its
        if deadline is not None and deadline <= self.monotonic():  # deadline to the new value
            self.delete(key)
        self.data[key] = value
        if ttl_s is not None:
            self.expire(key, ttl_s)

    def expire(self, key: str, ttl_s: float, now: float | None = None) -> None:
        """``PEXPIRE``: ``key`` goes ``ttl_s`` from ``now`` (the caller's reading of ``monotonic``, one for
        all its keys; None: read here); a missing or expired key is left gone."""
        if now is None:
            now = self.monotonic()
        old = self.deadlines.get(key)  # ``_alive`` inlined, on the same reading of the clock
        if old is not None:  # then the key is in ``data``, queued at ``old`` or before
            if old <= now or ttl_s <= 0:
                self.delete(key)
                return
            deadline = self.deadlines[key] = now + ttl_s
            if deadline >= old:  # pushed forward (what twins do on every call): its heap entry stands
                return
        elif key not in self.data:
            return
        elif ttl_s <= 0:
            self.delete(key)
            return
        else:
            deadline = self.deadlines[key] = now + ttl_s
        queued = self._queued.get(key)
        if queued is None or deadline < queued:
            self._queued[key] = deadline
            heapq.heappush(self._heap, (deadline, key))
            if len(self._heap) > 2 * len(self.deadlines) + _MIN_STALE:  # mostly stale: rebuild
                self._heap = [(d, k) for k, d in self.deadlines.items()]
                heapq.heapify(self._heap)
                self._queued = dict(self.deadlines)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)
        self.deadlines.pop(key, None)

    def ttl(self, key: str) -> float | None:
        """Seconds left; ``None`` when the key is missing or never expires."""
        if not self._alive(key) or key not in self.deadlines:
            return None
        return max(0.0, self.deadlines[key] - self.monotonic())

    def exists(self, key: str) -> bool:
        return self._alive(key)

    def expire_nx(self, key: str, ttl_s: float) -> None:
        """``PEXPIRE key ms NX``: an expiry for a key that has none (``if ttl(key) is None: expire(key)``,
        without computing the time left); a missing key, or one that has an expiry, is left as is."""
        deadline = self.deadlines.get(key)
        if deadline is None:
            if key in self.data:
                self.expire(key, ttl_s)
        elif deadline <= self.monotonic():
            self.delete(key)  # expired: gone, as ``ttl`` would have found it

    def sweep(self) -> None:
        """Drop a bounded batch of expired keys; called by every backend operation."""
        now = self.monotonic()
        heap = self._heap
        left = _SWEEP_BATCH
        while left and heap and heap[0][0] <= now:  # nearly every call finds nothing due: one test
            left -= 1
            deadline, key = heapq.heappop(heap)
            if self._queued.get(key) != deadline:
                continue  # superseded by an earlier deadline pushed later
            del self._queued[key]
            current = self.deadlines.get(key)
            if current is None:
                continue  # deleted, or made persistent
            if current <= now:
                self.delete(key)
            else:  # pushed forward since it was queued: look again then
                self._queued[key] = current
                heapq.heappush(heap, (current, key))


class MemoryBackend:
    """``StateBackend`` for one process; ``dlq_path`` makes its logs survive restarts.

    A full log makes ``log_append`` raise ``StateError("log full")`` (len >= max_len): a dead-letter
    queue must never drop a record quietly. File I/O is synchronous but small and only on log calls.
    """

    kind = "memory"

    def __init__(self, clock: Clock = SYSTEM_CLOCK, dlq_path: str | None = None) -> None:
        self.clock = clock
        self._time = time_of(clock)
        self.store = MemoryStore(clock)
        self._logs = Logs(clock, dlq_path)

    async def start(self) -> None:
        """Load the journal and compact it if removals left dead lines behind (no file is created)."""
        self._logs.load()

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        self.store.sweep()
        value = self.store.get(key)
        if value is None or isinstance(value, bytes):
            return value
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return (repr(value) if isinstance(value, float) else str(value)).encode()
        raise StateError(f"WRONGTYPE {key!r} holds a {type(value).__name__}, not a plain value")

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self.store.sweep()
        self.store.delete(key)  # SET replaces the value and its expiry
        self.store.set(key, value, ttl_s)

    async def set_many(self, items: list[tuple[str, bytes, float | None]]) -> None:
        self.store.sweep()
        for key, value, ttl_s in items:
            self.store.delete(key)
            self.store.set(key, value, ttl_s)

    async def delete(self, *keys: str) -> int:
        self.store.sweep()
        removed = 0
        for key in keys:
            in_store = self.store.exists(key)
            self.store.delete(key)
            removed += self._logs.drop(key) or in_store
        return removed

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """INCRBY; a ttl is only set when the key has none, so it starts a fixed window."""
        self.store.sweep()
        current = self.store.get(key, 0)
        try:
            if isinstance(current, bool) or not isinstance(current, int | bytes | str):
                raise ValueError
            value = int(current) + amount
        except ValueError:
            raise StateError("ERR value is not an integer or out of range") from None
        self.store.set(key, value)
        if ttl_s is not None and self.store.ttl(key) is None:
            self.store.expire(key, ttl_s)
        return value

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run the Python twin at ``clock.time()``; its failures are StateErrors, as Lua's are."""
        check_script_args(args)
        self.store.sweep()
        try:
            return to_reply(script.local(self.store, list(keys), list(args), self.clock.time()))
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"script {script.name} failed: {exc!r}") from exc

    async def run_fused(self, ops: list[FusedOp]) -> list[Any]:
        """The ops' natives at ``clock.time()``, in order, with nothing awaited between (atomic)."""
        return self.run_fused_now(ops)

    def sync_fused(self) -> Callable[[list[FusedOp]], list[Any]] | None:
        """``run_fused`` as a plain function, for a wrapper that would await a coroutine per call
        (``MeteredBackend``); None when a subclass overrides ``run_fused`` (a test double that fails or
        waits), so that its override is what runs."""
        return self.run_fused_now if type(self).run_fused is MemoryBackend.run_fused else None

    def sync_native(self) -> Callable[..., Any] | None:
        """``run_native`` when ``run_fused`` is this class's (else None, as ``sync_fused``)."""
        return self.run_native if type(self).run_fused is MemoryBackend.run_fused else None

    def run_native(self, name: str, native: Callable[..., Any], *args: Any) -> Any:
        """One concern's native alone, as ``run_fused`` runs the only op of a call named ``name`` (its
        fragment's), with nothing to share between ops: ``native(store, *args, now)``, no op object."""
        store = self.store
        heap = store._heap
        if heap and heap[0][0] <= store.monotonic():  # ``sweep``'s own test, without its call
            store.sweep()
        try:
            return native(store, *args, self._time())
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"fused call {name} failed: {exc!r}") from exc

    def run_fused_now(self, ops: list[FusedOp]) -> list[Any]:
        """``run_fused`` without a coroutine: nothing in it waits."""
        store = self.store
        heap = store._heap
        if heap and heap[0][0] <= store.monotonic():  # ``sweep``'s own test, without its call
            store.sweep()
        try:
            now, fx = self._time(), FusedCtx()
            out = []
            for op in ops:  # a loop, not a comprehension: two calls a request
                out.append(op.native(store, now, fx))
            return out
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"fused call {'+'.join(op.fragment.name for op in ops)} failed: {exc!r}") from exc

    async def log_append(self, key: str, record: dict[str, Any], max_len: int) -> str:
        return self._logs.append(key, record, max_len)

    async def log_range(self, key: str, count: int = 100, after: str | None = None) -> list[tuple[str, dict]]:
        return self._logs.range(key, count, after)

    async def log_remove(self, key: str, ids: list[str]) -> int:
        return self._logs.remove(key, ids)

    async def log_len(self, key: str) -> int:
        return self._logs.length(key)
