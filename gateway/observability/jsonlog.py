"""JSON-lines sinks for the access and audit logs: stdout and/or size-rotated files.

Lines are buffered and written in batches (one ``write`` per batch, whole lines only), so a busy
event loop pays for a list append per request, not a syscall; the batches are written by a thread
(``logqueue``), so a stdout pipe nobody reads or a slow disk never blocks the loop: past
``logging.queue_lines`` waiting lines, new ones are dropped and counted. Files are opened ``O_APPEND`` and
rotated under an ``flock`` on a sidecar lock file: with ``--workers N`` every worker appends to the
same file, the first to see it past ``max_bytes`` renames it (``.1`` ... ``.<backups>``) and the
others notice the new inode and reopen.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import threading

from gateway.observability.logqueue import CLOSE_WAIT_S, DEFAULT_MAX_LINES, LogQueue

log = logging.getLogger("gateway.observability.jsonlog")

STDOUT = "stdout"
OFF = "off"


class RotatingFile:
    """Appends whole batches of lines to ``path``; rotates past ``max_bytes`` keeping ``backups``."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._lock = threading.Lock()  # audit batches are written from executor threads

    def _open(self) -> int:
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return self._fd

    def write(self, data: bytes) -> None:
        with self._lock:
            fd = self._fd if self._fd is not None else self._open()
            if self._stale(fd):
                os.close(fd)
                fd = self._open()
            if self.max_bytes and os.fstat(fd).st_size + len(data) > self.max_bytes:
                fd = self._rotate(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

    def _stale(self, fd: int) -> bool:
        """True when another process rotated the file away from under our descriptor."""
        try:
            return os.stat(self.path).st_ino != os.fstat(fd).st_ino
        except FileNotFoundError:
            return True

    def _rotate(self, fd: int) -> int:
        lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self._stale(fd) and os.fstat(fd).st_size > 0:
                for i in range(self.backups - 1, 0, -1):
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
                if self.backups:
                    os.replace(self.path, f"{self.path}.1")
                else:
                    os.truncate(self.path, 0)
            os.close(fd)
            return self._open()
        finally:
            os.close(lock)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class LineSink:
    """Where JSON lines go: ``stdout``, ``off``, a file path, or ``stdout,<path>`` for both.

    ``add`` only buffers; ``flush`` hands the buffer to the writer thread. The owner flushes on a
    short timer; ``close`` at shutdown writes what is left (a bounded wait).
    """

    def __init__(self, target: str, max_bytes: int, backups: int, max_lines: int = DEFAULT_MAX_LINES,
                 name: str = "access") -> None:
        self.target = target
        self.max_bytes, self.backups = max_bytes, backups
        parts = [p.strip() for p in target.split(",") if p.strip()]
        self.stdout = STDOUT in parts
        paths = [p for p in parts if p not in (STDOUT, OFF)]
        self.files = [RotatingFile(p, max_bytes, backups) for p in paths]
        self.enabled = self.stdout or bool(self.files)
        self._buffer: list[bytes] = []
        self.queue = LogQueue(name, self.write, max_lines)

    def add(self, line: bytes) -> None:
        if self.enabled:
            self._buffer.append(line)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def flush(self) -> None:
        if not self._buffer:
            return
        data = b"\n".join(self._buffer) + b"\n"
        lines = len(self._buffer)
        self._buffer.clear()
        self.queue.put(data, lines)

    def write(self, data: bytes) -> None:
        """Write now (whole lines), to every target; a failing target is logged, never raised. The
        writer thread's target (blocking is fine there)."""
        if self.stdout:
            try:
                out = sys.stdout
                out.buffer.write(data) if hasattr(out, "buffer") else out.write(data.decode())
                out.flush()
            except (OSError, ValueError) as exc:
                log.warning("access log: stdout write failed: %s", exc)
        for f in self.files:
            try:
                f.write(data)
            except OSError as exc:
                log.warning("log file %s: write failed: %s", f.path, exc)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Write what is buffered, waiting at most ``wait_s`` for a slow output (then it is dropped, counted)."""
        self.flush()
        self.queue.close(wait_s)
        for f in self.files:
            f.close()
