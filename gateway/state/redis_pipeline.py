"""Automatic pipelining: the Redis calls of one event-loop iteration go out as one pipeline.

With many requests in flight, most of a Redis call's cost is redis-py's own work per call (pool
checkout, a write, a read), not Redis. So a call is queued, and the first call of a batch starts a
task that runs on the next loop iteration and sends everything queued by then as one
non-transactional pipeline on one connection. Each command stays atomic on its own (a script runs
whole on the server); nothing is atomic across commands, as before.

For a caller nothing changes: its own result or its own ``StateError``, within ``timeout`` of its
call (a batch's deadline counts from its first call), a NOSCRIPT reply is retried with EVAL for
just that command, and a caller that is cancelled drops only its reply (or its command, if it has
not been sent yet), never the batch.

Batches are kept per ``route``: one Redis has a single route; a Redis Cluster routes each call to
the node that owns its key's slot, so one pipeline goes to one node and a node that is down fails
only the calls meant for it. ``on_error`` sees every failure (a whole batch's or one reply's), so a
cluster client can re-read the cluster's layout after a failover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.exceptions import DataError, NoScriptError, RedisClusterException, RedisError, ResponseError

from gateway.state.base import StateError

FAILURES = (RedisError, RedisClusterException, OSError)  # what a batch can fail with, besides a timeout


class Call:
    """One queued command: redis-py method and arguments, the Lua to retry with, the caller's future."""

    __slots__ = ("op", "method", "args", "kwargs", "lua", "future")

    def __init__(self, op: str, method: str, args: tuple, kwargs: dict | None, lua: str | None,
                 future: asyncio.Future) -> None:
        self.op = op
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.lua = lua  # EVALSHA calls only: the body to EVAL after a NOSCRIPT reply
        self.future = future


class AutoPipeline:
    """Batches calls per loop iteration and route (at most ``max_batch`` a pipeline), one task per batch.

    ``client`` is a redis-py asyncio ``Redis`` or ``RedisCluster``: anything with ``pipeline()``.
    """

    def __init__(self, client: Any, timeout: float, max_batch: int = 256,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self._client = client
        self._timeout = timeout
        self._max_batch = max_batch
        self._on_error = on_error
        self._open: dict[str, list[Call]] = {}  # route -> the batch new calls join until its task starts
        self._tasks: set[asyncio.Task] = set()  # batches in flight (also keeps them referenced)

    def submit(self, op: str, method: str, args: tuple, kwargs: dict | None = None,
               lua: str | None = None, route: str = "") -> asyncio.Future:
        """Queue one command; the returned future gets its reply or a ``StateError``."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batch = self._open.get(route)
        if batch is None or len(batch) >= self._max_batch:
            batch = self._open[route] = []
            task = loop.create_task(self._send(route, batch, loop.time() + self._timeout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        batch.append(Call(op, method, args, kwargs, lua, future))
        return future

    async def drain(self) -> None:
        """Wait for the batches in flight (each bounded by the timeout); used by ``close``."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _send(self, route: str, batch: list[Call], deadline: float) -> None:
        if self._open.get(route) is batch:
            del self._open[route]  # later calls start a new batch
        calls = [call for call in batch if not call.future.done()]  # callers already gone
        if not calls:
            return
        try:
            async with asyncio.timeout_at(deadline):
                replies = await self._execute(calls)
                again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                if again:  # restart, SCRIPT FLUSH or failover: EVAL reloads the script
                    retried = await self._execute([calls[i] for i in again], reload=True)
                    for i, reply in zip(again, retried, strict=True):
                        replies[i] = reply
        except TimeoutError as exc:
            self._failed(calls, exc, f"no answer within {self._timeout * 1000:.0f} ms")
        except FAILURES as exc:
            self._failed(calls, exc, str(exc) or type(exc).__name__)
        except BaseException as exc:  # cancelled (loop shutting down): no caller may wait forever
            _fail(calls, exc, "cancelled")
            raise
        else:
            for call, reply in zip(calls, replies, strict=True):
                if isinstance(reply, Exception):  # its own error only, e.g. a script's error_reply
                    self._report(reply)
                    if call.future.done():
                        continue
                    text = str(reply) if isinstance(reply, ResponseError) else f"redis {call.op}: {reply}"
                    error = StateError(text)
                    error.__cause__ = reply
                    call.future.set_exception(error)
                elif not call.future.done():
                    call.future.set_result(reply)

    def _failed(self, calls: list[Call], exc: BaseException, detail: str) -> None:
        self._report(exc)
        _fail(calls, exc, detail)

    def _report(self, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(exc)

    async def _execute(self, calls: list[Call], reload: bool = False) -> list[Any]:
        """One pipeline; replies in order, a command's own error in its place instead of a reply."""
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            if reload:
                pipe.eval(call.lua, *call.args[1:])  # args[0] is the sha
            elif call.method == "evalsha":  # raw: a cluster pipeline refuses its evalsha() helper, not EVALSHA
                pipe.execute_command("EVALSHA", *call.args)
            else:
                getattr(pipe, call.method)(*call.args, **(call.kwargs or {}))
        try:
            return await pipe.execute(raise_on_error=False)
        except DataError:  # an argument redis-py can't encode; nothing was sent
            return await self._without_bad_arguments(calls, reload)

    async def _without_bad_arguments(self, calls: list[Call], reload: bool) -> list[Any]:
        """Fail only the calls whose arguments can't be encoded, send the others."""
        encode = self._client.get_encoder().encode
        replies: list[Any] = [None] * len(calls)
        good: list[int] = []
        for i, call in enumerate(calls):
            try:
                for arg in (*call.args, *(call.kwargs or {}).values()):
                    encode(arg)
                good.append(i)
            except DataError as exc:
                replies[i] = ResponseError(f"redis {call.op}: {exc}")
        if good and len(good) < len(calls):
            sent = await self._execute([calls[i] for i in good], reload)
            for i, reply in zip(good, sent, strict=True):
                replies[i] = reply
        elif good:
            raise DataError("unencodable argument in a pipeline")  # not ours to mask
        return replies


def _fail(calls: list[Call], cause: BaseException, detail: str) -> None:
    for call in calls:
        if not call.future.done():
            error = StateError(f"redis {call.op}: {detail}")
            error.__cause__ = cause
            call.future.set_exception(error)
