"""Log output off the event loop: lines wait in a bounded queue that one writer thread empties.

A ``write`` to a pipe nobody reads (a stuck log shipper, a container runtime that stopped draining
stdout) or to a slow disk blocks the caller. On the event loop that stops every request of the
process. Here the loop only appends to a queue; a daemon thread does the writing. Past
``max_lines`` waiting, new lines are dropped, not queued: counted per log in ``DROPPED``
(published as ``llm_gateway_log_records_dropped_total{log}``) so the loss is visible. ``close``
writes what is left, waiting a bounded time (a blocked pipe must not hold up a shutdown).
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable

DEFAULT_MAX_LINES = 10_000
CLOSE_WAIT_S = 1.0
DROPPED: Counter[str] = Counter()  # log name -> records dropped, process-wide ("access", "app")


class LogQueue:
    """Batches of whole lines for ``write``, written in order by one thread started on first use."""

    def __init__(self, name: str, write: Callable[[bytes], None], max_lines: int = DEFAULT_MAX_LINES) -> None:
        self.name = name
        self.max_lines = max_lines
        self._write = write
        self._items: deque[tuple[bytes, int]] = deque()
        self._queued = 0  # lines in ``_items``
        self._busy = False  # the writer holds a batch taken off the queue
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        return self._queued

    def put(self, data: bytes, lines: int = 1) -> bool:
        """Queue ``data`` (``lines`` whole lines); False, and counted, when the queue is full or closed."""
        with self._cond:
            if self._closed or self._queued + lines > self.max_lines:
                DROPPED[self.name] += lines
                return False
            self._items.append((data, lines))
            self._queued += lines
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"log-{self.name}", daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return  # closed and empty
                batches = list(self._items)  # written one by one: a file rotates between two of them
                count = self._queued
                self._items.clear()
                self._busy = True
            for data, lines in batches:
                try:
                    self._write(data)
                except Exception:  # noqa: BLE001 - a failing target loses its lines, never the thread
                    DROPPED[self.name] += lines
            with self._cond:
                self._queued -= count
                self._busy = False
                self._cond.notify_all()

    def flush(self, timeout: float = CLOSE_WAIT_S) -> bool:
        """Wait until everything queued is written (True) or ``timeout`` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout)

    def close(self, timeout: float = CLOSE_WAIT_S) -> bool:
        """Write what is queued (bounded wait), then stop the thread; later lines are dropped."""
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            if not done:  # the target is stuck: what still waits is lost, and counted so
                waiting = sum(lines for _, lines in self._items)
                DROPPED[self.name] += waiting
                self._queued -= waiting
                self._items.clear()
            self._cond.notify_all()
        return done
