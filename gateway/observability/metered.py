"""A state backend that times every call and counts its failures, for every stage at once.

It wraps whatever backend the gateway built, so rate limits, cache, budgets and the DLQ are all
measured without any of them knowing: ``llm_gateway_state_duration_seconds{op}`` and
``llm_gateway_state_errors_total{op}``, where ``op`` is the method or, for scripts, the script name
(both fixed in code). Anything else is delegated to the wrapped backend untouched.

For traces, while ``traced`` is on (the tracing stage sets it with the policy), each call is also
appended to the list in ``TRACED_CALLS`` (the traced request's own, set by the tracing stage), from
which the request's spans are built; with tracing off that is one attribute test per call.
"""

from __future__ import annotations

import functools
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from gateway.observability.metrics import GatewayMetrics
from gateway.state.base import Script, StateBackend, StateError


@dataclass(slots=True)
class StateCall:
    """One state call of a traced request, for its span."""

    op: str  # the method or the script's name
    started: float  # wall time
    duration_s: float
    failed: bool


TRACED_CALLS: ContextVar[list[StateCall] | None] = ContextVar("traced_state_calls", default=None)


def _trace(op: str, elapsed: float, failed: bool) -> None:
    calls = TRACED_CALLS.get()
    if calls is not None:
        calls.append(StateCall(op, time.time() - elapsed, elapsed, failed))


class MeteredBackend:
    """``StateBackend`` proxy: same behaviour, plus latency and error metrics per operation."""

    def __init__(self, inner: StateBackend, metrics: GatewayMetrics) -> None:
        self.inner = inner
        self.kind = inner.kind
        self._metrics = metrics
        self._children: dict[str, tuple[Any, Any]] = {}
        self.traced = False  # record calls for traces (set by the tracing stage when tracing is on)
        # a backend whose fused call never waits (memory) runs it without a coroutine of its own
        sync_fused = getattr(inner, "sync_fused", None)
        self._fused_now = sync_fused() if sync_fused is not None else None
        self._fused_series: tuple[Any, Any] | None = None
        sync_native = getattr(inner, "sync_native", None)  # ... nor a one-op call (``run_native``)
        self._native_now = sync_native() if sync_native is not None else None
        # what ``sync_fused`` and ``sync_native`` hand out: ``_now`` on the inner call, with no Python
        # call of their own between the caller and it (both run on every request)
        self._fused_sync = functools.partial(self._now, self._fused_now) if self._fused_now is not None else None
        self._native_sync = functools.partial(self._now, self._native_now) if self._native_now is not None else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _series(self, op: str) -> tuple[Any, Any]:
        series = self._children.get(op)
        if series is None:
            series = (self._metrics.state_duration.labels(op), self._metrics.state_errors.labels(op))
            self._children[op] = series
        return series

    async def _timed(self, op: str, call: Any) -> Any:
        duration, errors = self._series(op)
        start = time.perf_counter()
        failed = False
        try:
            return await call
        except StateError:
            errors.inc()
            failed = True
            raise
        finally:
            elapsed = time.perf_counter() - start
            duration.observe(elapsed)
            if self.traced:
                _trace(op, elapsed, failed)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    async def get(self, key: str) -> bytes | None:
        return await self._timed("get", self.inner.get(key))

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        await self._timed("set", self.inner.set(key, value, ttl_s))

    async def set_many(self, items: list[tuple[str, bytes, float | None]]) -> None:
        await self._timed("set_many", self.inner.set_many(items))

    async def delete(self, *keys: str) -> int:
        return await self._timed("delete", self.inner.delete(*keys))

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        return await self._timed("incr", self.inner.incr(key, amount, ttl_s))

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        # ``_timed`` inlined: scripts run several times per request, an extra coroutine each is measurable
        duration, errors = self._series(script.name)
        start = time.perf_counter()
        failed = False
        try:
            return await self.inner.run(script, keys, args)
        except StateError:
            errors.inc()
            failed = True
            raise
        finally:
            elapsed = time.perf_counter() - start
            duration.observe(elapsed)
            if self.traced:
                _trace(script.name, elapsed, failed)

    async def run_fused(self, ops: list[Any]) -> list[Any]:
        # one call per phase for the rate-limit and budget stages (``gateway.state.fused``), as ``run``
        if self._fused_now is not None:
            return self._now(self._fused_now, ops)
        duration, errors = self._fused()
        start = time.perf_counter()
        failed = False
        try:
            return await self.inner.run_fused(ops)
        except StateError:
            errors.inc()
            failed = True
            raise
        finally:
            elapsed = time.perf_counter() - start
            duration.observe(elapsed)
            if self.traced:
                _trace(_fused_name(ops), elapsed, failed)

    def sync_fused(self) -> Any:
        """``run_fused_now`` (as a partial of ``_now``) when the inner backend runs its fused call without
        waiting (memory); else None."""
        return self._fused_sync

    def run_fused_now(self, ops: list[Any]) -> list[Any]:
        """``run_fused`` as a plain function (``MemoryBackend.run_fused_now``), measured the same way."""
        return self._now(self._fused_now, ops)

    def sync_native(self) -> Any:
        """``run_native`` (as a partial of ``_now``) when the inner backend has one (memory), timed as
        ``run_fused``; else None."""
        return self._native_sync

    def run_native(self, name: str, native: Any, *args: Any) -> Any:
        """A one-op fused call run at once (``MemoryBackend.run_native``): measured as ``run_fused``."""
        return self._now(self._native_now, name, native, *args)

    def _fused(self) -> tuple[Any, Any]:
        series = self._fused_series
        if series is None:  # labelled on first use, as ``_series`` does
            series = self._fused_series = self._series("fused")
        return series

    def _now(self, call: Any, *args: Any) -> Any:
        """A fused call that does not wait (``call(*args)``), timed and counted as ``op="fused"``; its first
        argument names it in a trace (a concern's name, or the ops)."""
        start = time.perf_counter()
        try:
            result = call(*args)
        except BaseException as exc:
            self._now_failed(start, args[0], exc)
            raise
        elapsed = time.perf_counter() - start
        (self._fused_series or self._fused())[0].observe(elapsed)
        if self.traced:
            _trace(_fused_name(args[0]), elapsed, False)
        return result

    def _now_failed(self, start: float, what: Any, exc: BaseException) -> None:
        """``_now``'s call raised ``exc``: timed as any call, counted as an error when a ``StateError``."""
        duration, errors = self._fused()
        failed = isinstance(exc, StateError)
        if failed:
            errors.inc()
        elapsed = time.perf_counter() - start
        duration.observe(elapsed)
        if self.traced:
            _trace(_fused_name(what), elapsed, failed)

    async def log_append(self, key: str, record: dict[str, Any], max_len: int) -> str:
        return await self._timed("log_append", self.inner.log_append(key, record, max_len))

    async def log_range(self, key: str, count: int = 100, after: str | None = None) -> list[tuple[str, dict]]:
        return await self._timed("log_range", self.inner.log_range(key, count, after))

    async def log_remove(self, key: str, ids: list[str]) -> int:
        return await self._timed("log_remove", self.inner.log_remove(key, ids))

    async def log_len(self, key: str) -> int:
        return await self._timed("log_len", self.inner.log_len(key))


def _fused_name(what: str | list[Any]) -> str:
    """A fused call's span name: ``fused:`` and its concerns, e.g. ``fused:budget_settle+ratelimit_release``."""
    return "fused:" + (what if isinstance(what, str) else "+".join(op.fragment.name for op in what))
