"""In-process state: the embedded single-replica backend, and the dead-letter file it keeps.

Atomic without locks: nothing here awaits, so a Script's Python twin runs to completion between two
event-loop steps. Expiry is lazy (checked on access) plus an amortised sweep off a heap of
deadlines, so keys nobody reads again don't pile up. Script results go through ``to_reply`` so the
memory backend hands back exactly what Redis would for the same Lua value.

Logs live in memory and, given ``dlq_path``, in a JSONL journal shared with other processes (the
``gateway dlq`` CLI): every change is appended under an ``flock`` after catching up with what
others wrote, so the file, not this process, is the source of truth. Appends never fsync (a crash of
the process loses nothing; a power cut may lose the last lines); compaction does.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import heapq
import logging
import os
import secrets
from collections.abc import Iterator
from typing import Any

import orjson

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.state.base import Script, StateError

log = logging.getLogger(__name__)

LOG_FULL = "log full"  # the StateError message of log_append on a full log, on both backends
_SWEEP_BATCH = 32  # heap entries looked at per operation at most: bounds the cost of one sweep
_MIN_DEAD = 1024  # journal lines of removed records tolerated before compacting

StreamId = tuple[int, int]


def check_script_args(args: list[Any]) -> None:
    """Refuse what Redis can't carry as ARGV, so a twin can't quietly accept what Lua never gets."""
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, int | float | str | bytes):
            raise TypeError(f"script args must be int, float, str or bytes, not {type(arg).__name__}")


def to_reply(value: Any) -> Any:
    """Convert a Python twin's result the way Redis converts a Lua value into a reply.

    Numbers become ints (floats truncate toward zero), ``True`` 1, ``False``/``None`` nil, bytes
    str; a list stops at its first ``None`` (a Lua array ends at its first nil).
    """
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


def parse_id(text: str) -> StreamId:
    """``"<ms>-<seq>"`` (or ``"<ms>"``) as a sortable pair; rejected like Redis rejects it."""
    ms, _, seq = text.partition("-")
    try:
        parsed = (int(ms), int(seq) if seq else 0)
    except ValueError:
        parsed = (-1, -1)
    if parsed[0] < 0 or parsed[1] < 0:
        raise StateError(f"invalid stream id {text!r}")
    return parsed


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


class MemoryStore:
    """The ``LocalStore`` of Script twins: Python values with deadlines on ``clock.monotonic()``.

    ``set(key, value)`` without a ttl keeps the key's expiry, like INCRBY/HSET in Lua (what twins
    usually mirror); ``MemoryBackend.set`` clears it first, like SET.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._data: dict[str, Any] = {}
        self._deadline: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (deadline, key); stale entries are skipped

    def __len__(self) -> int:
        """Keys held, expired but not yet swept included: what the sweep keeps bounded."""
        return len(self._data)

    def _alive(self, key: str) -> bool:
        deadline = self._deadline.get(key)
        if deadline is not None and deadline <= self._clock.monotonic():
            self.delete(key)
            return False
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default) if self._alive(key) else default

    def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        if ttl_s is not None and ttl_s <= 0:
            self.delete(key)
            return
        self._alive(key)  # an expired key must not lend its deadline to the new value
        self._data[key] = value
        if ttl_s is not None:
            self.expire(key, ttl_s)

    def expire(self, key: str, ttl_s: float) -> None:
        if not self._alive(key):
            return
        if ttl_s <= 0:
            self.delete(key)
            return
        deadline = self._clock.monotonic() + ttl_s
        self._deadline[key] = deadline
        heapq.heappush(self._heap, (deadline, key))
        if len(self._heap) > 2 * len(self._deadline) + _MIN_DEAD:  # mostly stale: rebuild
            self._heap = [(d, k) for k, d in self._deadline.items()]
            heapq.heapify(self._heap)

    def delete(self, key: str) -> None:
        self._data.pop(key, None)
        self._deadline.pop(key, None)

    def ttl(self, key: str) -> float | None:
        """Seconds left; ``None`` when the key is missing or never expires."""
        if not self._alive(key) or key not in self._deadline:
            return None
        return max(0.0, self._deadline[key] - self._clock.monotonic())

    def exists(self, key: str) -> bool:
        return self._alive(key)

    def sweep(self) -> None:
        """Drop a bounded batch of expired keys; called by every backend operation."""
        now = self._clock.monotonic()
        heap = self._heap
        for _ in range(_SWEEP_BATCH):
            if not heap or heap[0][0] > now:
                return
            deadline, key = heapq.heappop(heap)
            if self._deadline.get(key) == deadline:
                self.delete(key)


class _Log:
    """One ordered log: ids kept sorted for range-after by bisection."""

    __slots__ = ("order", "records", "last")

    def __init__(self) -> None:
        self.order: list[StreamId] = []
        self.records: dict[StreamId, bytes] = {}  # orjson bytes: callers get fresh dicts, as from Redis
        self.last: StreamId = (0, 0)  # highest id ever minted, kept when records go (as Redis does)

    def add(self, sid: StreamId, data: bytes) -> None:
        if sid in self.records:
            return
        self.last = max(self.last, sid)
        if not self.order or sid > self.order[-1]:
            self.order.append(sid)
        else:
            bisect.insort(self.order, sid)
        self.records[sid] = data

    def remove(self, sid: StreamId) -> bool:
        if self.records.pop(sid, None) is None:
            return False
        del self.order[bisect.bisect_left(self.order, sid)]
        return True

    def next_id(self, now_ms: int) -> StreamId:
        ms, seq = self.last
        return (now_ms, 0) if now_ms > ms else (ms, seq + 1)


class _Journal:
    """The JSONL file behind the logs; followed by offset, replayed whole when replaced.

    A file is recognised by its first line (a random header), so a compaction by another process,
    even one that reuses the inode, forces a full replay rather than a read at a stale offset.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._head = b""  # first line of the file as we last knew it
        self._offset = 0  # bytes consumed: always the end of a complete line
        self.dead = 0  # lines that only describe removed records

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes (a sidecar lock file survives the data file's replacement)."""
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def read_new(self) -> tuple[bool, list[dict[str, Any]]]:
        """Complete lines appended since the last call; ``True`` first when the file must be replayed."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            reset, self._head, self._offset, self.dead = self._offset > 0, b"", 0, 0
            return reset, []
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(fd).st_size
            reset = self._offset > 0 and (
                size < self._offset or os.pread(fd, len(self._head), 0) != self._head
            )
            if reset:
                self._head, self._offset, self.dead = b"", 0, 0
            f.seek(self._offset)
            chunk = f.read(size - self._offset)
        end = chunk.rfind(b"\n") + 1
        if self._offset == 0 and end:
            self._head = chunk[: chunk.index(b"\n") + 1]
        self._offset += end
        return reset, _parse_lines(chunk[:end], self.path)

    def write(self, data: bytes) -> None:
        """Append whole lines; call under ``locked()`` right after ``read_new()``."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size > self._offset:  # nobody writes without the lock: this is a torn last line
                log.warning("%s: dropping a torn last line (%d bytes)", self.path, size - self._offset)
                os.ftruncate(fd, self._offset)
            if self._offset == 0:
                self._head = _header()
                data = self._head + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self._offset += len(data)
        finally:
            os.close(fd)

    def replace(self, body: bytes) -> None:
        """Atomically swap in a compacted file (under ``locked()``), fsynced before it is visible."""
        head = _header()
        tmp = f"{self.path}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "wb") as f:
            f.write(head + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._head, self._offset, self.dead = head, len(head) + len(body), 0


def _header() -> bytes:
    return orjson.dumps({"op": "gen", "gen": secrets.token_hex(8)}) + b"\n"


def _parse_lines(chunk: bytes, path: str) -> list[dict[str, Any]]:
    entries = []
    for line in chunk.splitlines():
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("%s: skipping an unreadable line", path)
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


class MemoryBackend:
    """``StateBackend`` for one process; ``dlq_path`` makes its logs survive restarts.

    A full log makes ``log_append`` raise ``StateError("log full")`` (len >= max_len): a dead-letter
    queue must never drop a record quietly. File I/O is synchronous but small and only on log calls.
    """

    kind = "memory"

    def __init__(self, clock: Clock = SYSTEM_CLOCK, dlq_path: str | None = None) -> None:
        self.clock = clock
        self.store = MemoryStore(clock)
        self._logs: dict[str, _Log] = {}
        self._journal = _Journal(dlq_path) if dlq_path else None

    async def start(self) -> None:
        """Load the journal and compact it if removals left dead lines behind (no file is created)."""
        if self._journal is None:
            return
        with self._io(lock=False):
            self._catch_up()
        if self._journal.dead:
            with self._io(lock=True):
                self._catch_up()
                self._compact()

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

    async def delete(self, *keys: str) -> int:
        self.store.sweep()
        removed = 0
        for key in keys:
            in_store = self.store.exists(key)
            self.store.delete(key)
            removed += self._drop_log(key) or in_store
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

    async def log_append(self, key: str, record: dict[str, Any], max_len: int) -> str:
        data = orjson.dumps(record)
        with self._io(lock=True):
            self._catch_up()
            entry = self._logs.get(key) or _Log()
            if len(entry.order) >= max_len:
                raise StateError(LOG_FULL)
            sid = entry.next_id(int(self.clock.time() * 1000))
            if self._journal is not None:
                self._journal.write(_add_line(orjson.dumps(key), sid, data))
            entry.add(sid, data)
            self._logs[key] = entry
        return format_id(sid)

    async def log_range(self, key: str, count: int = 100, after: str | None = None) -> list[tuple[str, dict]]:
        start = parse_id(after) if after is not None else (-1, -1)
        with self._io(lock=False):
            self._catch_up()
        entry = self._logs.get(key)
        if entry is None or count <= 0:
            return []
        first = bisect.bisect_right(entry.order, start)
        return [
            (format_id(sid), orjson.loads(entry.records[sid])) for sid in entry.order[first : first + count]
        ]

    async def log_remove(self, key: str, ids: list[str]) -> int:
        wanted = dict.fromkeys(parse_id(i) for i in ids)
        with self._io(lock=True):
            self._catch_up()
            entry = self._logs.get(key)
            gone = [sid for sid in wanted if sid in entry.records] if entry else []
            if not entry or not gone:
                return 0
            if self._journal is not None:
                self._journal.write(_line("rm", key, ids=[format_id(sid) for sid in gone]))
            for sid in gone:
                entry.remove(sid)
            self._note_dead(len(gone) + 1)
        return len(gone)

    async def log_len(self, key: str) -> int:
        with self._io(lock=False):
            self._catch_up()
        entry = self._logs.get(key)
        return len(entry.order) if entry else 0

    # -- journal plumbing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _io(self, lock: bool) -> Iterator[None]:
        """Hold the journal lock for changes (reads need none) and turn file errors into StateError."""
        journal = self._journal
        try:
            if journal is None or not lock:
                yield
            else:
                with journal.locked():
                    yield
        except OSError as exc:
            raise StateError(f"dead-letter file {journal.path if journal else '?'}: {exc}") from exc

    def _catch_up(self) -> None:
        """Apply what other processes (or instances) wrote to the journal since we last looked."""
        if self._journal is None:
            return
        reset, entries = self._journal.read_new()
        if reset:
            self._logs.clear()
        for entry in entries:
            try:
                self._apply(entry)
            except (KeyError, TypeError, StateError):
                log.warning("%s: skipping a malformed entry %r", self._journal.path, entry)

    def _apply(self, entry: dict[str, Any]) -> None:
        op, key = entry.get("op"), entry.get("key")
        if not isinstance(key, str):
            return
        if op == "add":
            self._logs.setdefault(key, _Log()).add(parse_id(entry["id"]), orjson.dumps(entry["rec"]))
        elif op == "rm":
            target = self._logs.get(key)
            removed = sum(target.remove(parse_id(i)) for i in entry["ids"]) if target else 0
            self._note_dead(removed + 1, compact=False)
        elif op == "del":
            self._note_dead(len(self._logs.pop(key, _Log()).order) + 1, compact=False)
        elif op == "last":
            target = self._logs.setdefault(key, _Log())
            target.last = max(target.last, parse_id(entry["id"]))

    def _drop_log(self, key: str) -> bool:
        """DEL of a log key, as Redis DEL drops a stream; the lock is only taken if it is one."""
        with self._io(lock=False):
            self._catch_up()
        if key not in self._logs:
            return False
        with self._io(lock=True):
            self._catch_up()
            dropped = self._logs.pop(key, None)
            if dropped is None:
                return False
            if self._journal is not None:
                self._journal.write(_line("del", key))
            self._note_dead(len(dropped.order) + 1)
        return True

    def _note_dead(self, lines: int, compact: bool = True) -> None:
        """Count journal lines that only describe removed records; compact once they dominate."""
        if self._journal is None:
            return
        self._journal.dead += lines
        if compact and self._journal.dead > max(_MIN_DEAD, sum(len(e.order) for e in self._logs.values())):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the journal with live records only, keeping each log's last id (under the lock)."""
        if self._journal is None:
            return
        parts = []
        for key, entry in self._logs.items():
            parts.append(_line("last", key, id=format_id(entry.last)))
            encoded_key = orjson.dumps(key)
            parts.extend(_add_line(encoded_key, sid, entry.records[sid]) for sid in entry.order)
        self._journal.replace(b"".join(parts))


def _line(op: str, key: str, **fields: Any) -> bytes:
    return orjson.dumps({"op": op, "key": key, **fields}) + b"\n"


def _add_line(encoded_key: bytes, sid: StreamId, data: bytes) -> bytes:
    """Built by hand so a record is serialised once, not parsed back to be embedded."""
    return b'{"op":"add","key":%b,"id":"%b","rec":%b}\n' % (encoded_key, format_id(sid).encode(), data)
