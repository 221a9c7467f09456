"""One behaviour suite for both state backends: memory (fake clock) and a real redis-server.

The same assertions run on both, so a Script's Lua body and its Python twin, and the two log
implementations, can't drift apart unnoticed. Redis-only tests cover what only a network can do:
outages, a black-holed server, recovery, and the script cache being flushed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.clock import FakeClock
from gateway.policy.model import StatePolicy
from gateway.state import MemoryBackend, RedisBackend, Script, StateError, build_backend
from gateway.state.base import LocalStore
from gateway.state.memory import parse_id
from tests.support.redis_server import RedisServer


@dataclass
class Harness:
    backend: MemoryBackend | RedisBackend
    clock: FakeClock
    server: RedisServer | None = None

    async def elapse(self, seconds: float) -> None:
        """Let TTLs run out: the fake clock drives memory; Redis expiry needs real time."""
        self.clock.advance(seconds)
        if self.server is not None:
            await asyncio.sleep(seconds)


@pytest.fixture(params=["memory", "redis"])
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    clock = FakeClock()
    server: RedisServer | None = None
    if request.param == "memory":
        backend: MemoryBackend | RedisBackend = MemoryBackend(clock=clock)
    else:
        server = request.getfixturevalue("redis_server")
        backend = RedisBackend(server.url, timeout_ms=250, clock=clock)
    await backend.start()
    yield Harness(backend, clock, server)
    await backend.close()


# -- sample scripts, written once per backend -------------------------------------------------------


def _bucket_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> Any:
    cap, rate, cost = float(args[0]), float(args[1]), float(args[2])
    state = store.get(keys[0]) or {}
    tokens = float(state.get("tokens", cap))
    last = float(state.get("ts", now))
    tokens = min(cap, tokens + (now - last) * rate)
    allowed = 0
    if tokens >= cost:
        tokens -= cost
        allowed = 1
    store.set(keys[0], {"tokens": tokens, "ts": now}, ttl_s=math.ceil(cap / rate * 1000) / 1000)
    return [allowed, format(tokens, ".14g")]  # Lua's tostring is %.14g


BUCKET = Script(
    name="bucket",
    lua="""
local cap, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1]) or cap
local last = tonumber(s[2]) or now
tokens = math.min(cap, tokens + (now - last) * rate)
local allowed = 0
if tokens >= cost then tokens = tokens - cost allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate * 1000))
return {allowed, tostring(tokens)}
""",
    local=_bucket_local,
)


def _incr_all_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> Any:
    out = []
    for key, amount in zip(keys, args, strict=True):
        store.set(key, store.get(key, 0) + int(amount))
        out.append(store.get(key))
    return out


INCR_ALL = Script(
    name="incr_all",
    lua="local out = {} for i, k in ipairs(KEYS) do out[i] = redis.call('INCRBY', k, ARGV[i]) end return out",
    local=_incr_all_local,
)

SHAPES = Script(
    name="shapes",
    lua="return {1, 2.7, true, false, 'x', {1, nil, 3}}",
    local=lambda store, keys, args, now: [1, 2.7, True, False, "x", [1, None, 3]],
)

ECHO = Script(
    name="echo",
    lua="return {#ARGV, ARGV[1], tostring(now)}",
    local=lambda store, keys, args, now: [len(args), str(args[0]), format(now, ".14g")],
)


def _refuse(*_: Any) -> Any:
    raise StateError("nope")


def _crash(*_: Any) -> Any:
    raise RuntimeError("boom")


REFUSE = Script(name="refuse", lua="return redis.error_reply('nope')", local=_refuse)
CRASH = Script(name="crash", lua="error('boom')", local=_crash)


# -- plain values -------------------------------------------------------------------------------------


async def test_get_set_delete(h: Harness) -> None:
    b = h.backend
    assert await b.get("k") is None
    await b.set("k", b"v1")
    await b.set("k", b"v2")
    await b.set("other", b"x")
    assert await b.get("k") == b"v2"
    assert await b.delete("k", "other", "missing") == 2
    assert await b.delete() == 0
    assert await b.get("k") is None


async def test_set_ttl_expires(h: Harness) -> None:
    b = h.backend
    await b.set("k", b"v", ttl_s=0.2)
    assert await b.get("k") == b"v"
    await h.elapse(0.3)
    assert await b.get("k") is None
    await b.set("k", b"v", ttl_s=0)  # already expired: not stored
    assert await b.get("k") is None


async def test_set_without_ttl_clears_expiry(h: Harness) -> None:
    await h.backend.set("k", b"v", ttl_s=0.2)
    await h.backend.set("k", b"w")
    await h.elapse(0.3)
    assert await h.backend.get("k") == b"w"


async def test_incr(h: Harness) -> None:
    b = h.backend
    assert await b.incr("n") == 1
    assert await b.incr("n", 5) == 6
    assert await b.incr("n", -2) == 4
    assert await b.get("n") == b"4"
    await b.set("text", b"abc")
    with pytest.raises(StateError, match="not an integer"):
        await b.incr("text")


async def test_incr_ttl_is_a_fixed_window(h: Harness) -> None:
    b = h.backend
    assert await b.incr("w", ttl_s=0.4) == 1
    await h.elapse(0.25)
    assert await b.incr("w", ttl_s=0.4) == 2  # does not push the expiry back
    await h.elapse(0.25)
    assert await b.incr("w", ttl_s=0.4) == 1  # the window started at the first increment


# -- scripts --------------------------------------------------------------------------------------------


async def test_bucket_script_gives_the_same_answers(h: Harness) -> None:
    async def take() -> Any:
        return await h.backend.run(BUCKET, ["bucket:t1"], [3, 1, 1])

    seen = [await take() for _ in range(4)]
    h.clock.advance(0.5)
    seen.append(await take())
    h.clock.advance(0.75)
    seen.append(await take())
    h.clock.advance(10)
    seen.append(await take())
    assert seen == [[1, "2"], [1, "1"], [1, "0"], [0, "0"], [0, "0.5"], [1, "0.25"], [1, "2"]]


async def test_script_with_several_keys(h: Harness) -> None:
    b = h.backend
    assert await b.run(INCR_ALL, ["a", "b"], [2, 5]) == [2, 5]
    assert await b.run(INCR_ALL, ["a", "b"], [2, 5]) == [4, 10]
    assert await b.get("a") == b"4"
    assert await b.get("b") == b"10"


async def test_script_results_convert_like_redis(h: Harness) -> None:
    assert await h.backend.run(SHAPES, [], []) == [1, 2, 1, None, "x", [1]]


async def test_script_sees_args_and_now(h: Harness) -> None:
    assert await h.backend.run(ECHO, [], ["a"]) == [1, "a", "1700000000"]
    h.clock.advance(1.25)
    assert await h.backend.run(ECHO, [], [7]) == [1, "7", "1700000001.25"]


async def test_script_failures_are_state_errors(h: Harness) -> None:
    with pytest.raises(StateError, match="^nope$"):
        await h.backend.run(REFUSE, [], [])
    with pytest.raises(StateError, match="boom"):
        await h.backend.run(CRASH, [], [])
    with pytest.raises(TypeError):
        await h.backend.run(ECHO, [], [None])


# -- logs -------------------------------------------------------------------------------------------------


async def test_log_append_range_remove(h: Harness) -> None:
    b = h.backend
    records = [{"n": i, "text": "ünïcode", "nested": {"list": [1, 2.5, None]}} for i in range(3)]
    ids = [await b.log_append("dlq", rec, max_len=10) for rec in records]
    assert [parse_id(i) for i in ids] == sorted(parse_id(i) for i in ids)
    assert len(set(ids)) == 3
    assert await b.log_range("dlq") == list(zip(ids, records, strict=True))
    assert await b.log_range("dlq", count=2) == list(zip(ids[:2], records[:2], strict=True))
    assert await b.log_range("dlq", after=ids[0]) == list(zip(ids[1:], records[1:], strict=True))
    assert await b.log_range("dlq", after=ids[2]) == []
    assert await b.log_remove("dlq", [ids[1], "1-0"]) == 1
    assert await b.log_remove("dlq", [ids[1]]) == 0
    assert await b.log_remove("dlq", []) == 0
    assert await b.log_len("dlq") == 2
    assert [i for i, _ in await b.log_range("dlq")] == [ids[0], ids[2]]


async def test_log_full_refuses_instead_of_dropping(h: Harness) -> None:
    b = h.backend
    first = await b.log_append("q", {"n": 1}, max_len=2)
    await b.log_append("q", {"n": 2}, max_len=2)
    with pytest.raises(StateError) as err:
        await b.log_append("q", {"n": 3}, max_len=2)
    assert str(err.value) == "log full"
    assert [r["n"] for _, r in await b.log_range("q")] == [1, 2]
    await b.log_remove("q", [first])
    await b.log_append("q", {"n": 3}, max_len=2)
    assert [r["n"] for _, r in await b.log_range("q")] == [2, 3]


async def test_missing_log_and_bad_ids(h: Harness) -> None:
    b = h.backend
    assert await b.log_range("none") == []
    assert await b.log_len("none") == 0
    assert await b.log_remove("none", ["1-0"]) == 0
    await b.log_append("q", {"n": 1}, max_len=5)
    with pytest.raises(StateError):
        await b.log_range("q", after="not-an-id")
    with pytest.raises(StateError):
        await b.log_remove("q", ["bogus"])


async def test_delete_drops_a_log(h: Harness) -> None:
    await h.backend.log_append("q", {"n": 1}, max_len=5)
    assert await h.backend.delete("q") == 1
    assert await h.backend.log_len("q") == 0


# -- memory only: expiry sweep, ids, the dead-letter file -------------------------------------------------


async def test_memory_sweeps_expired_keys_nobody_reads() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    for i in range(500):
        await backend.set(f"k{i}", b"v", ttl_s=1)
    await backend.set("kept", b"v")
    clock.advance(2)
    for _ in range(20):  # each operation sweeps a bounded batch
        await backend.get("other")
    assert len(backend.store) == 1


async def test_memory_expiry_pushed_forward_is_swept_at_its_last_deadline_and_queued_once() -> None:
    """Twins push a hot key's expiry forward on every call: the heap keeps one entry for it, and the
    sweep drops the key only once its latest deadline has passed."""
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    store = backend.store
    store.set("hot", {"n": 1})
    for _ in range(1000):
        store.expire("hot", 10)
        clock.advance(0.01)  # 10 s of calls, each pushing the deadline 10 s ahead
    assert len(store._heap) == 1  # one live entry, not one per call
    clock.advance(9)  # past its first deadline, not its last one
    await backend.get("other")  # an operation sweeps
    assert store.get("hot") == {"n": 1} and store.ttl("hot") == pytest.approx(1, abs=0.02)
    store.expire("hot", 0.5)  # an earlier deadline is queued at once
    clock.advance(0.6)
    await backend.get("other")
    assert len(store) == 0


async def test_memory_store_set_keeps_expiry_like_incrby() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    backend.store.set("k", 1, ttl_s=5)
    backend.store.set("k", 2)
    assert backend.store.ttl("k") == 5
    clock.advance(5)
    assert backend.store.get("k") is None


def test_memory_store_expire_nx_sets_an_expiry_only_where_there_is_none() -> None:
    """``PEXPIRE NX`` (what the budget settle's ``PTTL == -1`` check does): a key without expiry gets
    one, one with an expiry keeps it, a missing key stays missing and an expired one is gone."""
    clock = FakeClock()
    store = MemoryBackend(clock=clock).store
    store.set("plain", {"n": 1})
    store.set("timed", {"n": 1}, ttl_s=5)
    store.set("old", {"n": 1}, ttl_s=1)
    clock.advance(2)
    for key in ("plain", "timed", "missing", "old"):
        store.expire_nx(key, 30)
    assert store.ttl("plain") == 30 and store.ttl("timed") == 3
    assert not store.exists("missing") and "old" not in store.data


async def test_memory_ids_are_monotonic_with_a_frozen_or_backward_clock() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    ids = [await backend.log_append("q", {}, max_len=10) for _ in range(2)]
    clock.set(1_600_000_000.0)
    ids.append(await backend.log_append("q", {}, max_len=10))
    assert ids == ["1700000000000-0", "1700000000000-1", "1700000000000-2"]


async def test_dlq_file_survives_a_restart_and_is_shared(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "dlq.jsonl")
    clock = FakeClock()
    a = MemoryBackend(clock=clock, dlq_path=path)
    await a.start()
    ids = [await a.log_append("dlq", {"n": i}, max_len=10) for i in range(3)]
    assert await a.log_remove("dlq", [ids[0]]) == 1

    b = MemoryBackend(clock=clock, dlq_path=path)  # a restart, or the `gateway dlq` CLI
    await b.start()
    assert await b.log_range("dlq") == [(ids[1], {"n": 1}), (ids[2], {"n": 2})]
    new = await b.log_append("dlq", {"n": 3}, max_len=10)
    assert parse_id(new) > parse_id(ids[2])
    assert await a.log_len("dlq") == 3  # a sees what b appended
    assert await b.log_remove("dlq", [ids[1]]) == 1
    assert [i for i, _ in await a.log_range("dlq")] == [ids[2], new]  # ...and what b removed
    assert await a.log_append("dlq", {"n": 4}, max_len=3) and await b.log_len("dlq") == 3
    with pytest.raises(StateError, match="log full"):
        await b.log_append("dlq", {"n": 5}, max_len=3)


async def test_dlq_compaction_keeps_records_and_last_id(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    clock = FakeClock()
    a = MemoryBackend(clock=clock, dlq_path=str(path))
    ids = [await a.log_append("dlq", {"n": i}, max_len=100) for i in range(10)]
    await a.log_remove("dlq", ids[:9])
    b = MemoryBackend(clock=clock, dlq_path=str(path))
    await b.start()  # compacts: header, last id, one live record
    assert len(path.read_bytes().splitlines()) == 3
    assert await b.log_range("dlq") == [(ids[9], {"n": 9})]
    again = await a.log_append("dlq", {"n": 10}, max_len=100)  # a notices the file was replaced
    assert await a.log_len("dlq") == 2 and await b.log_len("dlq") == 2
    await a.log_remove("dlq", [ids[9], again])
    c = MemoryBackend(clock=FakeClock(start=1_000.0), dlq_path=str(path))
    await c.start()
    assert parse_id(await c.log_append("dlq", {}, max_len=100)) > parse_id(again)


async def test_dlq_compacts_on_its_own_once_removals_dominate(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    a = MemoryBackend(clock=FakeClock(), dlq_path=str(path))
    ids = [await a.log_append("dlq", {"n": i}, max_len=5000) for i in range(1500)]
    for start in range(0, 1500, 100):
        await a.log_remove("dlq", ids[start : start + 100])
    assert len(path.read_bytes().splitlines()) < 500  # 1515 lines without a compaction
    assert await MemoryBackend(dlq_path=str(path)).log_len("dlq") == 0


async def test_dlq_survives_a_torn_last_line_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    a = MemoryBackend(clock=FakeClock(), dlq_path=str(path))
    first = await a.log_append("dlq", {"n": 1}, max_len=10)
    with path.open("ab") as f:
        f.write(b"not json\n")
        f.write(b'{"op":"add","key":"dlq","id":"17')  # a crash mid-write
    b = MemoryBackend(clock=FakeClock(start=1_800_000_000.0), dlq_path=str(path))
    await b.start()
    second = await b.log_append("dlq", {"n": 2}, max_len=10)
    c = MemoryBackend(dlq_path=str(path))
    assert await c.log_range("dlq") == [(first, {"n": 1}), (second, {"n": 2})]


# -- redis only: outages, recovery, the script cache ----------------------------------------------------


async def _fails_fast(call: Any) -> float:
    started = time.monotonic()
    with pytest.raises(StateError):
        await call
    return time.monotonic() - started


async def test_redis_down_fails_fast_then_recovers(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, timeout_ms=250)
    await backend.set("k", b"v")
    redis_server.stop()
    for call in (
        backend.get("k"),
        backend.set("k", b"v"),
        backend.run(BUCKET, ["b"], [3, 1, 1]),
        backend.log_append("q", {}, max_len=5),
        backend.incr("n", ttl_s=1),
        backend.ping(),
    ):
        assert await _fails_fast(call) < 1.0
    redis_server.start()
    await backend.set("k", b"back")  # the first call after the outage already works
    assert await backend.get("k") == b"back"
    await backend.close()


async def test_redis_restart_between_calls_needs_no_failed_call(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, timeout_ms=250)
    await asyncio.gather(*(backend.set(f"k{i}", b"v") for i in range(5)))  # several pooled connections
    redis_server.stop()
    await asyncio.sleep(0.1)  # the loop sees the closed sockets (it runs while a real Redis restarts)
    redis_server.start()
    assert await asyncio.gather(*(backend.get(f"k{i}") for i in range(5))) == [None] * 5
    await backend.close()


async def test_black_holed_redis_times_out_and_does_not_poison_the_pool(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, timeout_ms=250)
    await backend.set("k", b"one")
    redis_server.pause()
    try:
        elapsed = await _fails_fast(backend.get("k"))
        assert 0.2 <= elapsed < 1.0
        assert await _fails_fast(backend.run(ECHO, [], ["x"])) < 1.0
    finally:
        redis_server.resume()
    await backend.set("k2", b"two")
    assert await backend.get("k2") == b"two"  # not the late reply of the timed-out GET
    assert await backend.get("k") == b"one"
    await backend.close()


async def test_cancelled_redis_call_is_cancelled_not_an_error(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, timeout_ms=2000)
    await backend.set("k", b"v")
    redis_server.pause()
    try:
        task = asyncio.create_task(backend.get("k"))
        await asyncio.sleep(0.05)
        task.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        redis_server.resume()
    assert await backend.get("k") == b"v"
    await backend.close()


async def test_redis_reloads_flushed_scripts(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, timeout_ms=250, clock=FakeClock())
    raw = aioredis.Redis.from_url(redis_server.url)
    assert await backend.run(INCR_ALL, ["a"], [1]) == [1]
    await raw.script_flush()
    assert await backend.run(INCR_ALL, ["a"], [1]) == [2]  # NOSCRIPT -> EVAL
    before = await raw.info("commandstats")
    assert await backend.run(INCR_ALL, ["a"], [1]) == [3]
    after = await raw.info("commandstats")
    assert after["cmdstat_evalsha"]["calls"] == before["cmdstat_evalsha"]["calls"] + 1
    assert after["cmdstat_eval"]["calls"] == before["cmdstat_eval"]["calls"]  # one round trip
    await raw.aclose()
    await backend.close()


async def test_redis_scripts_use_server_time_without_an_injected_clock(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url)
    count, arg, now = await backend.run(ECHO, [], ["x"])
    assert (count, arg) == (1, "x")
    assert abs(float(now) - time.time()) < 5
    await backend.close()


# -- wiring ---------------------------------------------------------------------------------------------


async def test_build_backend(tmp_path: Path) -> None:
    memory = build_backend(StatePolicy(dlq_path=str(tmp_path / "dlq.jsonl")))
    assert isinstance(memory, MemoryBackend) and memory.kind == "memory"
    remote = build_backend(StatePolicy(backend="redis", redis_url="redis://127.0.0.1:1/0", timeout_ms=100))
    assert isinstance(remote, RedisBackend) and remote.kind == "redis"
    assert await _fails_fast(remote.ping()) < 1.0  # nothing listens on port 1
    await remote.close()


async def test_memory_backend_creates_no_files_until_a_log_is_written(tmp_path: Path) -> None:
    backend = MemoryBackend(dlq_path=str(tmp_path / "dlq.jsonl"))
    await backend.start()
    assert await backend.log_len("dlq") == 0
    assert await backend.log_range("dlq") == []
    assert list(tmp_path.iterdir()) == []
