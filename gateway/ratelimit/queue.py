"""Per-tenant FIFO waiting for admission (``queue: {max_wait_ms}``), for clients that prefer latency.

A request over its limit joins its tenant's line instead of getting a 429, and so does every request
arriving while the line is not empty (no overtaking). Only the head of the line retries: right when
the last answer said capacity returns, sooner when this replica frees a concurrency slot, and at
least every ``POLL_S`` (other replicas free capacity too). Order is FIFO within a replica; across
replicas the shared log admits whoever asks first once capacity returns.

The line is an ``asyncio.Lock``, whose waiters are served strictly in arrival order; a waiter whose
deadline passes leaves it (cancellation removes it too) and gets one last attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

POLL_S = 0.1  # the head re-checks at least this often

T = TypeVar("T")


class Line:
    """One tenant's waiting line in this replica."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.freed = asyncio.Event()
        self.waiting = 0

    @property
    def busy(self) -> bool:
        return self.waiting > 0


async def _nap(line: Line, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await line.freed.wait()


async def wait_turn(line: Line, deadline: float, attempt: Callable[[], Awaitable[T]],
                    admitted: Callable[[T], bool], retry_s: Callable[[T], float]) -> T:
    """Wait in line until ``attempt()`` admits or ``deadline`` (loop time) passes; the last answer."""
    loop = asyncio.get_running_loop()
    line.waiting += 1
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await line.lock.acquire()
        except TimeoutError:
            return await attempt()
        try:
            while True:
                line.freed.clear()  # before the attempt: a release during it must still wake us
                result = await attempt()
                left = deadline - loop.time()
                if admitted(result) or left <= 0:
                    return result
                hint = retry_s(result)
                await _nap(line, min(left, POLL_S, hint if hint > 0 else POLL_S))
        finally:
            line.lock.release()
    finally:
        line.waiting -= 1


class Lines:
    """The lines of every tenant that has queued in this replica."""

    def __init__(self) -> None:
        self.lines: dict[str, Line] = {}  # by tenant

    def get(self, tenant: str) -> Line:
        line = self.lines.get(tenant)
        if line is None:
            line = self.lines[tenant] = Line()
        return line

    def freed(self, tenant: str) -> None:
        """A slot of ``tenant`` was released here: wake its head now rather than at the next poll."""
        line = self.lines.get(tenant)
        if line is not None and line.busy:
            line.freed.set()
