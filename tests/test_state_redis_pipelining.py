"""Automatic pipelining in ``RedisBackend``, against a real redis-server.

Concurrent calls share pipelines, yet every caller must see exactly what it would alone: its own
reply, its own error, its own deadline, and its own cancellation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.clock import FakeClock
from gateway.state import RedisBackend, Script, StateError
from tests.support.redis_server import RedisServer

INCR_ALL = Script(
    name="incr_all",
    lua="local out = {} for i, k in ipairs(KEYS) do out[i] = redis.call('INCRBY', k, ARGV[i]) end return out",
    local=lambda *_: None,
)
REFUSE = Script(name="refuse", lua="return redis.error_reply('nope')", local=lambda *_: None)
ECHO = Script(name="echo", lua="return {ARGV[1], tostring(now)}", local=lambda *_: None)


class Counting:
    """Counts the pipelines a backend sends and their sizes."""

    def __init__(self, backend: RedisBackend) -> None:
        self.sizes: list[int] = []
        pipe = backend._pipe
        execute = pipe._execute

        async def counted(calls: list[Any], reload: bool = False) -> list[Any]:
            self.sizes.append(len(calls))
            return await execute(calls, reload)

        pipe._execute = counted  # type: ignore[method-assign]


@pytest.fixture
async def backend(redis_server: RedisServer) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(redis_server.url, timeout_ms=250, clock=FakeClock())
    yield b
    await b.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_server.url)
    yield r
    await r.aclose()


async def _steps(b: RedisBackend, i: int) -> list[Any]:
    """Four dependent calls on one task's own keys, plus one on a key nobody writes."""
    out: list[Any] = [await b.set(f"s{i}", str(i).encode(), ttl_s=60)]
    out.append(await b.incr(f"n{i}", i, ttl_s=60))
    out.append(await b.run(INCR_ALL, [f"n{i}", f"m{i}"], [1, i]))
    out.append(await b.get(f"s{i}"))
    out.append(await b.log_append(f"q{i}", {"i": i}, max_len=5) is not None)
    out.append(await b.get("nobody"))
    return out


async def test_concurrent_calls_match_sequential_ones(backend: RedisBackend, raw: aioredis.Redis) -> None:
    sequential = [await _steps(backend, i) for i in range(40)]
    await raw.flushall()
    counting = Counting(backend)
    concurrent = await asyncio.gather(*(_steps(backend, i) for i in range(40)))  # 240 calls
    assert concurrent == sequential
    assert sequential[7] == [None, 7, [8, 7], b"7", True, None]
    assert len(counting.sizes) <= 12  # ~one pipeline per step, not one round trip per call
    assert max(counting.sizes) == 40


async def test_batches_are_capped(redis_server: RedisServer) -> None:
    b = RedisBackend(redis_server.url, timeout_ms=1000, max_batch=64)
    counting = Counting(b)
    results = await asyncio.gather(*(b.incr("n") for _ in range(200)))
    assert sorted(results) == list(range(1, 201))  # full batches go out at once, on separate connections
    assert counting.sizes == [64, 64, 64, 8]
    await b.close()


async def test_one_failing_command_fails_only_its_caller(backend: RedisBackend) -> None:
    await backend.set("text", b"x")
    results = await asyncio.gather(
        backend.run(INCR_ALL, ["a"], [1]),
        backend.run(REFUSE, [], []),
        backend.incr("text"),  # WRONG: not an integer
        backend.set("bad", None),  # type: ignore[arg-type]  # redis-py can't encode it
        backend.get("text"),
        backend.run(INCR_ALL, ["a"], [1]),
        return_exceptions=True,
    )
    assert results[0] == [1] and results[5] == [2] and results[4] == b"x"
    assert isinstance(results[1], StateError) and str(results[1]) == "nope"
    assert isinstance(results[2], StateError) and "not an integer" in str(results[2])
    assert isinstance(results[3], StateError) and str(results[3]).startswith("redis set: ")
    assert await backend.get("bad") is None


async def test_script_flush_mid_batch_retries_only_those_commands(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    assert await backend.run(INCR_ALL, ["a"], [1]) == [1]
    await raw.script_flush()
    before = await raw.info("commandstats")
    counting = Counting(backend)
    results = await asyncio.gather(
        *(backend.run(INCR_ALL, ["a"], [1]) for _ in range(10)),
        backend.get("missing"),
        backend.run(REFUSE, [], []),
        backend.run(ECHO, [], ["e"]),
        return_exceptions=True,
    )
    assert results[:10] == [[n] for n in range(2, 12)]  # each ran exactly once, in order
    assert results[10] is None
    assert isinstance(results[11], StateError) and str(results[11]) == "nope"
    assert results[12] == ["e", "1700000000"]
    assert counting.sizes == [13, 12]  # the batch, then EVAL for just the 12 NOSCRIPT commands
    after = await raw.info("commandstats")
    assert after["cmdstat_eval"]["calls"] - before.get("cmdstat_eval", {}).get("calls", 0) == 12
    assert await backend.run(INCR_ALL, ["a"], [1]) == [12]  # loaded again: EVALSHA from now on


async def _failures(calls: list[Any]) -> tuple[float, list[Any]]:
    started = time.monotonic()
    results = await asyncio.gather(*calls, return_exceptions=True)
    return time.monotonic() - started, results


async def test_dead_server_fails_the_whole_batch_fast(backend: RedisBackend, redis_server: RedisServer) -> None:
    await backend.set("k", b"v")
    redis_server.stop()
    elapsed, results = await _failures([backend.get("k"), backend.run(INCR_ALL, ["a"], [1]), backend.ping()] * 20)
    assert elapsed < 0.25
    assert all(isinstance(r, StateError) for r in results)
    assert str(results[0]).startswith("redis get: ") and str(results[1]).startswith("redis incr_all: ")
    redis_server.start()
    assert await backend.run(INCR_ALL, ["a"], [1]) == [1]


async def test_black_holed_server_fails_the_batch_within_the_timeout(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    await backend.set("k", b"v")
    redis_server.pause()
    try:
        elapsed, results = await _failures([backend.get("k") for _ in range(50)] + [backend.incr("n")])
    finally:
        redis_server.resume()
    assert 0.2 <= elapsed < 0.5
    assert all(isinstance(r, StateError) for r in results)
    assert str(results[0]).startswith("redis get: ") and str(results[-1]).startswith("redis incr: ")
    assert await backend.get("k") == b"v"  # the timed-out connection was not put back with a late reply


async def test_a_cancelled_caller_does_not_break_the_others(redis_server: RedisServer) -> None:
    b = RedisBackend(redis_server.url, timeout_ms=2000)
    await b.set("k", b"v")
    redis_server.pause()
    try:
        tasks = [asyncio.create_task(b.incr("n")) for _ in range(10)]
        await asyncio.sleep(0.05)  # sent, waiting for the reply
        for task in tasks[::3]:
            task.cancel()
    finally:
        redis_server.resume()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results[::3])
    assert [r for i, r in enumerate(results) if i % 3] == [2, 3, 5, 6, 8, 9]  # the cancelled INCRs ran too
    assert await b.get("k") == b"v"
    await b.close()


async def test_a_caller_cancelled_before_the_flush_sends_nothing(backend: RedisBackend) -> None:
    task = asyncio.create_task(backend.set("gone", b"1"))
    await asyncio.sleep(0)  # the task has queued its SET; the batch has not started yet
    task.cancel()
    other = await backend.incr("n")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert other == 1
    assert await backend.get("gone") is None
