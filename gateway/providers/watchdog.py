"""One timer per upstream stream bounding each read, instead of an ``asyncio.timeout`` per read.

A read waits at most ``idle_s`` and never past the answer's ``deadline`` (loop clock), as the
``asyncio.timeout(max(0.001, min(idle_s, deadline - now)))`` around each read did; the time the consumer
spends between reads does not count. Per read the cost is a clock read and two attribute writes
(``enter`` before, ``since = 0.0`` after): the one loop timer is re-armed only when it fires and finds
that reads moved the bound, so a stream of many events costs one timer per ``idle_s``, not one per event.

When the timer finds a read past its bound it cancels the reading task, as ``asyncio.timeout`` does;
``expired`` tells the ``CancelledError`` out of that read apart from an outside cancellation (client
gone, shutdown): with the task's cancel count back where it was, it was the watchdog's cut alone;
an outside request on top of it wins, and the read ends cancelled.

Usage (the reader)::

    dog = Watchdog(idle_s, deadline)
    try:
        while True:
            dog.enter()
            try:
                item = await source.__anext__()
            except asyncio.CancelledError:
                if dog.expired():
                    raise TimeoutError from None
                raise
            dog.since = 0.0
            ...
    finally:
        dog.close()
"""

from __future__ import annotations

import asyncio
from asyncio import current_task

MIN_WAIT_S = 0.001  # a read past the deadline still gets this long (as the per-read timeout's max(0.001, ...))


class Watchdog:
    """Bounds the reads of one stream; ``since`` is the start of the read in progress, 0.0 between reads."""

    __slots__ = ("loop", "idle_s", "deadline", "since", "task", "_base", "_handle", "_fired")

    def __init__(self, idle_s: float, deadline: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.idle_s = idle_s
        self.deadline = deadline
        self.since = 0.0
        self.task: asyncio.Task | None = None  # the task reading (the first read and the rest may differ)
        self._base = 0  # the task's cancel count when it started reading here
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False  # the reading task was cancelled by us and has not seen it yet

    def enter(self) -> None:
        """A read starts (call right before awaiting it, in the reading task)."""
        self.since = now = self.loop.time()
        task = current_task(self.loop)
        if task is not self.task:
            self.task, self._base = task, task.cancelling() if task is not None else 0
        if self._handle is None:
            self._handle = self.loop.call_at(self._due(now), self._fire)

    def expired(self) -> bool:
        """After a ``CancelledError`` out of a read: True if it was this watchdog's cut and nothing else.

        Takes our cancel request back; an outside request made as well stays and the caller re-raises.
        """
        if not self._fired:
            return False
        self._fired = False
        assert self.task is not None
        return self.task.uncancel() <= self._base

    def close(self) -> None:
        """The stream is over: drop the timer (and a cut that never reached the read)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fired and self.task is not None:
            self._fired = False
            self.task.uncancel()

    def _due(self, since: float) -> float:
        return since + max(MIN_WAIT_S, min(self.idle_s, self.deadline - since))

    def _fire(self) -> None:
        self._handle = None
        since = self.since
        if not since or self.task is None or self.task.done():  # between reads: the next read re-arms
            return
        due = self._due(since)
        if due > self.loop.time():  # reads since the last check moved the bound
            self._handle = self.loop.call_at(due, self._fire)
            return
        self._fired = True
        self.task.cancel()
