"""Commands packed by hiredis (``gateway.state.redis_pack``) reach Redis exactly as redis-py packs them."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from gateway.state import RedisBackend, Script
from gateway.state.redis_pack import PackedConnection
from tests.support.redis_server import RedisServer

CASES: list[tuple[Any, ...]] = [
    ("EVALSHA", "0" * 40, 2, "gw:{acme}:rl:t", "gw:{acme}:rl:c", "abc.1", "0", 60_000_000, "R", 100, 1),
    ("HINCRBY", "k", "spent", -12_345_678_901_234_567),
    ("SET", "k", 0.1, "PX", 1e-7, 2.0**60, 1 / 3, float(10**20)),
    ("SET", "gw:{é}:ключ", "日本語", b"\xff\x00raw"),
    ("SET", "big", "x" * 200_000),  # redis-py sends a value past its buffer cutoff in chunks
    ("CONFIG GET", "maxmemory"),  # a name with a space: redis-py splits it
    (b"CLIENT LIST",),
]


@pytest.mark.parametrize("args", CASES, ids=lambda a: str(a[0]))
def test_the_bytes_are_redis_pys(args: tuple[Any, ...]) -> None:
    assert b"".join(PackedConnection().pack_command(*args)) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("bad", [True, None, object()])
def test_an_argument_redis_py_refuses_is_refused_the_same_way(bad: Any) -> None:
    with pytest.raises(DataError):
        PackedConnection().pack_command("SET", "k", bad)


ECHO = Script(name="echo", lua="return ARGV", local=lambda store, keys, args, now: [str(a) for a in args])


async def test_the_backend_sends_with_it_and_redis_reads_the_same_arguments(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, timeout_ms=2000)
    try:
        args: list[Any] = ["tok.7", 42, -3, 0.25, 1e-7, "é"]
        reply = await backend.run(ECHO, ["gw:{t}:k"], args)
        assert [r.decode() if isinstance(r, bytes) else r for r in reply] == \
            ["tok.7", "42", "-3", "0.25", "1e-07", "é"]
        assert backend._client.connection_pool.connection_class is PackedConnection
    finally:
        await backend.close()
