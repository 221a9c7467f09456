"""The memory backend's logs (the dead-letter queue) and the JSONL journal that keeps them.

Given a path, logs live in memory and in a JSONL journal shared with other processes (the ``gateway
dlq`` CLI): every change is appended under an ``flock`` after catching up with what others wrote, so
the file, not this process, is the source of truth. Appends never fsync (a crash of the process loses
nothing; a power cut may lose the last lines); compaction does.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from typing import Any

import orjson

from gateway.clock import Clock
from gateway.state.base import StateError

log = logging.getLogger("gateway.state.memory")  # its warnings are the memory backend's

LOG_FULL = "log full"  # the StateError message of log_append on a full log, on both backends
_MIN_DEAD = 1024  # journal lines of removed records tolerated before compacting

StreamId = tuple[int, int]


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


class Log:
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


class Logs:
    """Named logs in memory, mirrored to the journal at ``path`` when one is given.

    ``MemoryBackend``'s ``log_*`` calls; ids are minted at ``clock.time()`` as Redis stream ids are.
    """

    def __init__(self, clock: Clock, path: str | None = None) -> None:
        self._clock = clock
        self._logs: dict[str, Log] = {}
        self._journal = Journal(path) if path else None

    def load(self) -> None:
        """Load the journal and compact it if removals left dead lines behind (no file is created)."""
        if self._journal is None:
            return
        with self._io(lock=False):
            self._catch_up()
        if self._journal.dead:
            with self._io(lock=True):
                self._catch_up()
                self._compact()

    def append(self, key: str, record: dict[str, Any], max_len: int) -> str:
        data = orjson.dumps(record)
        with self._io(lock=True):
            self._catch_up()
            entry = self._logs.get(key) or Log()
            if len(entry.order) >= max_len:
                raise StateError(LOG_FULL)
            sid = entry.next_id(int(self._clock.time() * 1000))
            if self._journal is not None:
                self._journal.write(_add_line(orjson.dumps(key), sid, data))
            entry.add(sid, data)
            self._logs[key] = entry
        return format_id(sid)

    def range(self, key: str, count: int = 100, after: str | None = None) -> list[tuple[str, dict]]:
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

    def remove(self, key: str, ids: list[str]) -> int:
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

    def length(self, key: str) -> int:
        with self._io(lock=False):
            self._catch_up()
        entry = self._logs.get(key)
        return len(entry.order) if entry else 0

    def drop(self, key: str) -> bool:
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
            self._logs.setdefault(key, Log()).add(parse_id(entry["id"]), orjson.dumps(entry["rec"]))
        elif op == "rm":
            target = self._logs.get(key)
            removed = sum(target.remove(parse_id(i)) for i in entry["ids"]) if target else 0
            self._note_dead(removed + 1, compact=False)
        elif op == "del":
            self._note_dead(len(self._logs.pop(key, Log()).order) + 1, compact=False)
        elif op == "last":
            target = self._logs.setdefault(key, Log())
            target.last = max(target.last, parse_id(entry["id"]))

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


class Journal:
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


def _line(op: str, key: str, **fields: Any) -> bytes:
    return orjson.dumps({"op": op, "key": key, **fields}) + b"\n"


def _add_line(encoded_key: bytes, sid: StreamId, data: bytes) -> bytes:
    """Built by hand so a record is serialised once, not parsed back to be embedded."""
    return b'{"op":"add","key":%b,"id":"%b","rec":%b}\n' % (encoded_key, format_id(sid).encode(), data)
