"""Waiting for a pooled upstream connection is its own phase, with its own timeout and metric.

aiohttp queues a request when a provider's pool (``max_connections``) is full, and its ``connect``
timeout would count that wait; a timer around the whole POST would charge it to the first byte. Here
the provider's connector (``TimedConnector``) tells the calling attempt's ``PoolTimer`` (found in the
context variable ``TIMER``, set by the attempt) when the request queues for the pool, when it gets out,
when it opens a new connection and when it holds one; the one deadline of the attempt moves accordingly:
``pool_s`` while queued, then ``connect_s + first_byte`` to connect and answer, then ``first_byte``
once a connection is held. The first-byte timer starts only then. The attempt opens its timeout
without a deadline (nothing in aiohttp waits before the connector): a free pooled connection, the
common case, then sets one deadline instead of two. Deadlines are kept by the provider's
``deadlines.Deadlines`` (one loop timer for all its attempts, not one each).

Measured (benchmarks/bench_http_path.py): aiohttp's tracing signals, which did this before, cost
~20 us of CPU per upstream call; the connector's overrides cost next to nothing. On an aiohttp
without the connector hooks (``_wait_for_available_connection``, ``_create_connection``: private), the
tracing is used instead (and the timeout opens with ``connect_s + first_byte``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from types import SimpleNamespace
from typing import Any

import aiohttp

from gateway.providers.deadlines import Deadlines
from gateway.providers.exchange import LEAN_HANDLER, AnswerHandler

PoolObserver = Callable[[str, float, bool], None]  # (provider, seconds waited, timed out)
# The calling attempt's timer (this task only): ``HTTPProvider._post`` sets it around its POST.
TIMER: ContextVar[PoolTimer | None] = ContextVar("gateway_pool_timer", default=None)
HOOKED = all(hasattr(aiohttp.TCPConnector, m) for m in ("_wait_for_available_connection", "_create_connection"))
# ``_get(key, traces)``: a free pooled ``Connection`` or None, what ``BaseConnector.connect`` tries first
POOLED = "traces" in inspect.signature(getattr(aiohttp.TCPConnector, "_get", lambda key: None)).parameters


class PoolTimer:
    """One attempt's clock across the pool wait, the connect and the first byte, and the attempt's timeout.

    ``with timer:`` is ``asyncio.timeout`` (``when``: its first deadline on the loop clock, None for none
    yet): at the deadline the task is cancelled and the cancellation leaves the block as ``TimeoutError``;
    a cancellation from elsewhere stays one. One object, entered and left without a coroutine; its
    deadline kept by ``deadlines`` (the provider's, shared by its attempts: see ``deadlines.py``).
    """

    __slots__ = ("loop", "deadlines", "started", "pool_s", "connect_s", "first_byte_s", "when", "queued_at",
                 "waited_s", "held_at", "timed_out", "expired", "_task", "_cancelling")

    def __init__(self, pool_s: float, connect_s: float, first_byte_s: float, opening: float | None = None,
                 deadlines: Deadlines | None = None) -> None:
        """``opening``: seconds from now to the first deadline (None: none until the connector sets one);
        ``deadlines``: of the running loop (None: a set of this timer's own)."""
        if deadlines is None:
            deadlines = Deadlines(asyncio.get_running_loop())
        self.deadlines = deadlines
        self.loop = loop = deadlines.loop
        self.started = loop.time()
        self.pool_s = pool_s
        self.connect_s = connect_s
        self.first_byte_s = first_byte_s
        self.when: float | None = None if opening is None else self.started + opening
        self.queued_at: float | None = None  # set while waiting for the pool
        self.waited_s = 0.0
        self.held_at: float | None = None  # when a connection was held: the first-byte timer's start
        self.timed_out = False  # the attempt ended waiting for the pool past pool_s
        self.expired = False  # the deadline passed and the task was cancelled for it
        self._task: asyncio.Task[Any] | None = None  # while entered
        self._cancelling = 0

    def __enter__(self) -> PoolTimer:
        task = asyncio.current_task(self.loop)
        if task is None:
            raise RuntimeError("PoolTimer should be used inside a task")
        self._task, self._cancelling = task, task.cancelling()
        if self.when is not None:
            self.deadlines.watch(self, self.when)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: Any) -> None:
        task, self._task = self._task, None
        self.deadlines.forget(self)
        if self.expired and task is not None and task.uncancel() <= self._cancelling \
                and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def _reschedule(self, when: float) -> None:
        """The deadline moves to ``when`` (while entered and not yet passed; else nothing)."""
        if self._task is not None and not self.expired:
            self.deadlines.watch(self, when)

    def _fire(self) -> None:
        assert self._task is not None
        self._task.cancel()
        self.expired = True

    def _deadline(self, seconds: float) -> None:
        self._reschedule(self.loop.time() + seconds)

    def queued(self) -> None:
        if self.queued_at is None:  # aiohttp may queue again after a lost race: the wait goes on
            self.queued_at = self.loop.time()
            self._deadline(self.pool_s)

    def dequeued(self) -> None:
        if self.queued_at is not None:
            self.waited_s = self.loop.time() - self.queued_at
            self.queued_at = None
            self._deadline(self.connect_s + self.first_byte_s)

    def connecting(self) -> None:
        """A new connection is being opened: connect and answer within ``connect_s + first_byte`` of the
        start, unless the pool wait already set the deadline."""
        if self.when is None:
            self._reschedule(self.started + self.connect_s + self.first_byte_s)

    def held(self) -> None:
        self.held_at = now = self.loop.time()
        if self._task is not None and not self.expired:
            self.deadlines.watch(self, now + self.first_byte_s)


async def _queued(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
    if isinstance(ctx.trace_request_ctx, PoolTimer):
        ctx.trace_request_ctx.queued()


async def _dequeued(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
    if isinstance(ctx.trace_request_ctx, PoolTimer):
        ctx.trace_request_ctx.dequeued()


async def _held(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
    if isinstance(ctx.trace_request_ctx, PoolTimer):
        ctx.trace_request_ctx.held()


def pool_trace() -> aiohttp.TraceConfig:
    """The tracing hooks a provider session needs for its ``PoolTimer``s."""
    trace = aiohttp.TraceConfig()
    trace.on_connection_queued_start.append(_queued)
    trace.on_connection_queued_end.append(_dequeued)
    trace.on_connection_reuseconn.append(_held)
    trace.on_connection_create_end.append(_held)
    return trace


class TimedConnector(aiohttp.TCPConnector):
    """A keep-alive pool that reports the pool wait and the held connection to the calling attempt; its
    connections speak ``exchange.AnswerHandler``."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        if LEAN_HANDLER and isinstance(getattr(self, "_factory", None), functools.partial):
            self._factory = functools.partial(AnswerHandler, loop=self._loop)

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        # a free pooled connection, as ``BaseConnector.connect`` takes it first (one coroutine less to get it)
        conn = await self._get(req.connection_key, traces) if POOLED and not req.proxy else None
        if conn is None:
            conn = await super().connect(req, traces, timeout)
        timer = TIMER.get()
        if timer is not None:
            timer.held()
        return conn

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        timer = TIMER.get()
        if timer is not None:
            timer.connecting()
        return await super()._create_connection(req, traces, timeout)  # type: ignore[misc]

    async def _wait_for_available_connection(self, key: Any, traces: Any) -> None:
        timer = TIMER.get()
        if timer is not None:
            timer.queued()
        await super()._wait_for_available_connection(key, traces)  # type: ignore[misc]
        if timer is not None:  # (not on a timeout: the attempt then ended waiting for the pool)
            timer.dequeued()
