"""Graceful shutdown: stop accepting, let requests finish within the grace, then end what remains.

``Drain`` knows every pipeline request in flight (its handler task). On SIGTERM ``shut_down``
closes the listening sockets and idle keep-alive connections at once, waits for the requests to
finish until a reserve before the grace ends, then cancels the remaining ones through ``expire``:
their handler (``Handler.handle``/``write``) tells this cut from a departed client with ``cut`` and
answers 503 ``shutting_down`` (a stream ends with its surface's error event), so an SDK raises
instead of reading a truncated 200, and every request's ``complete`` still runs. Then the app's
cleanup stops the stages (flushing the logs), the providers and the state backend.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.errors import GatewayError

log = logging.getLogger("gateway.server")

RESERVE_MAX_S = 2.0  # time kept after the cut to settle, log and close: min(2 s, grace / 5)


def shutting_down() -> GatewayError:
    return GatewayError(503, "The gateway is shutting down; retry the request.", code="shutting_down",
                        headers={"retry-after": "1"}, outcome="shutting_down")


def overloaded() -> GatewayError:
    return GatewayError(503, "The gateway is at capacity; retry shortly.", code="overloaded",
                        headers={"retry-after": "1"}, outcome="shed")


class Drain:
    """The pipeline requests in flight, and the switch that ends them when the grace runs out."""

    def __init__(self) -> None:
        self.draining = False
        self._open: dict[asyncio.Task, bool] = {}  # in flight (``complete`` included) -> still working: may be cut
        self._cut: set[asyncio.Task] = set()
        self._idle: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._open)

    def enter(self, loop: asyncio.AbstractEventLoop | None = None, cap: int | None = None) -> asyncio.Task | None:
        """Count the current task in, or None when ``cap`` requests are in flight already (shed it).

        Given its ``loop``, finding the task costs no ``getpid()`` system call (CPython 3.11)."""
        if cap is not None and len(self._open) >= cap:
            return None
        task = asyncio.current_task(loop)
        assert task is not None
        self._open[task] = True
        return task

    def completing(self, task: asyncio.Task) -> None:
        """From here the request only settles: a cut would interrupt its ``complete``."""
        if task in self._open:
            self._open[task] = False

    def leave(self, task: asyncio.Task) -> None:
        self._open.pop(task, None)
        if self._cut:
            self._cut.discard(task)
        if not self._open and self._idle is not None:
            self._idle.set()

    def cut(self, task: asyncio.Task | None) -> bool:
        """Whether the cancellation being handled is the shutdown's (and only it): then it is absorbed."""
        if task is None or task not in self._cut:
            return False
        self._cut.discard(task)
        return task.uncancel() == 0

    def expire(self) -> int:
        """Cancel every request still working; each answers 503 ``shutting_down``. Returns how many."""
        victims = [task for task, working in self._open.items() if working]
        for task in victims:
            self._cut.add(task)
            task.cancel()
        return len(victims)

    async def wait_idle(self, timeout: float) -> bool:
        if not self._open:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
            return True
        except TimeoutError:
            return False
        finally:
            self._idle = None


async def shut_down(runner: web.AppRunner, drain: Drain, grace_s: float) -> None:
    """The SIGTERM sequence; returns (the process may exit) before ``grace_s`` has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    reserve = min(RESERVE_MAX_S, grace_s / 5)
    drain.draining = True
    for site in list(runner.sites):
        await site.stop()  # the listening sockets close: new connections are refused from now on
    if runner.server is not None:
        runner.server.pre_shutdown()  # idle keep-alive connections close; busy ones after their answer
    log.info("shutting down: %d requests in flight, grace %.1f s", len(drain), grace_s)
    if not await drain.wait_idle(deadline - reserve - loop.time()):
        log.warning("shutdown grace ending: cutting %d requests with 503 shutting_down", drain.expire())
        if not await drain.wait_idle(reserve / 2):
            log.warning("%d requests still settling at shutdown", len(drain))
    await runner.cleanup()
    log.info("shut down in %.1f s", grace_s - (deadline - loop.time()))
