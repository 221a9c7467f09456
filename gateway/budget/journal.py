"""Charges waiting for the shared ledger: in memory, or in this replica's append-only journal on disk.

A settle that could not reach the shared ledger (down, or a timeout: its outcome unknown) is kept
here and replayed oldest first; settles are idempotent (``ledger.SETTLED_TTL_S``), so a replay of
one that did apply changes nothing. ``MemoryPending`` keeps them in a bounded deque (tests, and a
gateway whose shared state is the memory backend). ``SettleJournal`` keeps them in a JSONL file per
process under ``state.journal_dir``:

* ``{"t": <wall s>, "c": [<charge>]}`` one line per charge, appended as it fails;
* ``{"done": N}`` the first N charge lines of the file are applied (written after each replayed batch;
  a lost marker only means a harmless replay).

Writes go straight to the file (``O_APPEND``); ``flush`` fsyncs them in batches (``FSYNC_EVERY_S``).
Each process holds an ``flock`` on its own file; at start it adopts the files of processes that no
longer hold theirs (a replica restarted, or crashed) by copying their pending lines into its own, so
nothing is lost across a restart. Only ``BUFFER_MAX`` pending charges are held in memory; the rest
are read back from the file as the replay reaches them. Once all are applied the file is truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import orjson

from gateway.budget.ledger import Charge

log = logging.getLogger("gateway.budget")

MEMORY_MAX = 10_000  # MemoryPending's bound
BUFFER_MAX = 4096  # journal lines held in memory at once
FSYNC_EVERY_S = 0.05
READ_CHUNK = 1 << 16


def encode(charge: Charge, at: float) -> bytes:
    c = charge
    row = [c.rid, c.cost, list(c.scope_keys), list(c.scope_ttls_ms), c.day_key, c.day_ttl_ms,
           [list(f) for f in c.fields]]
    return orjson.dumps({"t": at, "c": row}) + b"\n"


def decode(row: list) -> Charge:
    rid, cost, keys, ttls, day, day_ttl, fields = row
    return Charge(str(rid), int(cost), tuple(keys), tuple(int(t) for t in ttls), str(day), int(day_ttl),
                  tuple((str(f), int(a)) for f, a in fields))


class Pending(Protocol):
    """Charges to replay, oldest first."""

    def __len__(self) -> int: ...
    @property
    def full(self) -> bool: ...
    def oldest(self) -> float | None: ...
    def append(self, charge: Charge, at: float) -> bool: ...
    def head(self, n: int) -> list[Charge]: ...
    def done(self, n: int) -> None: ...


class MemoryPending:
    """A bounded deque: past ``max_len`` new charges are refused (``append`` returns False)."""

    def __init__(self, max_len: int = MEMORY_MAX) -> None:
        self.max_len = max_len
        self._items: deque[tuple[float, Charge]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_len

    def oldest(self) -> float | None:
        return self._items[0][0] if self._items else None

    def append(self, charge: Charge, at: float) -> bool:
        if self.full:
            return False
        self._items.append((at, charge))
        return True

    def head(self, n: int) -> list[Charge]:
        return [c for _, c in list(self._items)[:n]]

    def done(self, n: int) -> None:
        for _ in range(min(n, len(self._items))):
            self._items.popleft()


class SettleJournal:
    """This process's journal file under ``folder``, holding at most ``max_len`` pending charges."""

    def __init__(self, folder: str, max_len: int) -> None:
        self.folder = Path(folder)
        self.max_len = max_len
        name = f"settle-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        self.path = self.folder / name
        self._fd = -1
        self._buffer: deque[tuple[float, Charge]] = deque()
        self._read_pos = 0  # file offset of the first pending line not in the buffer
        self._unread = 0  # pending lines on disk only
        self._applied = 0  # charge lines of the file applied (the "done" marker)
        self._dirty = False
        self.adopted = 0  # charges taken over from other processes' files at open

    # -- open and close ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create this process's file and take over orphaned ones (raises OSError)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for other in sorted(self.folder.glob("settle-*.jsonl")):
            if other != self.path:
                self._adopt(other)
        os.fsync(self._fd)
        self._unread = self.adopted
        self._fill()

    def close(self) -> None:
        if self._fd < 0:
            return
        os.fsync(self._fd)
        empty = not len(self)
        os.close(self._fd)  # releases the lock: a successor adopts what is left
        self._fd = -1
        if empty:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _adopt(self, other: Path) -> None:
        """Copy the pending lines of a file nobody holds into ours, then remove it."""
        try:
            fd = os.open(other, os.O_RDWR)
        except OSError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # a live process holds it
            if not other.exists() or os.stat(other).st_ino != os.fstat(fd).st_ino:
                return  # another process adopted it first
            lines = list(_pending_lines(fd))
            if lines:
                os.write(self._fd, b"".join(lines))
                self.adopted += len(lines)
            os.fsync(self._fd)
            other.unlink()
            log.warning("settle journal: took over %d pending charges from %s", len(lines), other.name)
        finally:
            os.close(fd)

    # -- the queue --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._buffer) + self._unread

    @property
    def full(self) -> bool:
        return len(self) >= self.max_len

    def oldest(self) -> float | None:
        return self._buffer[0][0] if self._buffer else None

    def append(self, charge: Charge, at: float) -> bool:
        """Write one charge (fsync'd by the next ``flush``); False when full or the write failed."""
        if self.full:
            return False
        line = encode(charge, at)
        try:
            os.write(self._fd, line)
        except OSError as exc:
            log.error("settle journal %s: write failed: %s", self.path, exc)
            return False
        self._dirty = True
        if self._unread == 0 and len(self._buffer) < BUFFER_MAX:
            self._buffer.append((at, charge))
            self._read_pos = os.fstat(self._fd).st_size
        else:
            self._unread += 1
        return True

    def head(self, n: int) -> list[Charge]:
        if len(self._buffer) < n:
            self._fill()
        return [c for _, c in list(self._buffer)[:n]]

    def done(self, n: int) -> None:
        """The first ``n`` pending charges are applied: mark it; truncate the file once all are."""
        n = min(n, len(self._buffer))
        if n <= 0:
            return
        for _ in range(n):
            self._buffer.popleft()
        self._applied += n
        try:
            if not len(self):
                os.ftruncate(self._fd, 0)
                self._applied = self._read_pos = 0
            else:
                os.write(self._fd, orjson.dumps({"done": self._applied}) + b"\n")
            self._dirty = True
        except OSError as exc:
            log.error("settle journal %s: marker write failed: %s", self.path, exc)
        self._fill()

    def _fill(self) -> None:
        """Read pending lines from disk into the buffer, up to ``BUFFER_MAX``."""
        while self._unread and len(self._buffer) < BUFFER_MAX:
            data = os.pread(self._fd, READ_CHUNK, self._read_pos)
            end = data.rfind(b"\n")
            if end < 0:
                return
            for line in data[: end + 1].splitlines():
                self._read_pos += len(line) + 1
                entry = _parse(line)
                if entry is not None and "c" in entry:
                    self._buffer.append((float(entry["t"]), decode(entry["c"])))
                    self._unread -= 1
                    if len(self._buffer) >= BUFFER_MAX or not self._unread:
                        return

    async def flush(self) -> None:
        """fsync what was written since the last flush (in a thread: it may take milliseconds)."""
        if self._dirty and self._fd >= 0:
            self._dirty = False
            await asyncio.get_running_loop().run_in_executor(None, os.fsync, self._fd)

    async def run_flusher(self) -> None:
        while True:
            await asyncio.sleep(FSYNC_EVERY_S)
            try:
                await self.flush()
            except OSError as exc:
                log.error("settle journal %s: fsync failed: %s", self.path, exc)


def _parse(line: bytes) -> dict | None:
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


def _pending_lines(fd: int) -> Iterator[bytes]:
    """The charge lines of a journal file past its last "done" marker (a torn last line is skipped)."""
    charges: list[bytes] = []
    applied = 0
    with os.fdopen(os.dup(fd), "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            entry = _parse(line)
            if entry is None:
                log.warning("settle journal: skipping a malformed line")
            elif "c" in entry:
                charges.append(line)
            elif "done" in entry:
                applied = int(entry["done"])
    yield from charges[applied:]
