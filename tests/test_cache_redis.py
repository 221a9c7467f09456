"""The cache on a real Redis that dies, hangs and comes back: requests are always served."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.cache import MSG, cache_gateway, chat, chat_stream, eventually, state_for
from tests.support.mock_openai import Fault


@pytest.fixture
def gw(request, make_gateway, upstream):
    return cache_gateway(make_gateway, upstream, state_for(request, "redis"))


def test_entries_live_in_redis_with_a_ttl(gw, redis_server):
    import redis

    chat(gw.client("sk-acme"))
    stats = gw.services.cache_stats
    assert eventually(lambda: stats.stores == 1)
    conn = redis.Redis.from_url(redis_server.url)
    try:
        keys = [k.decode() for k in conn.keys("*cache*")]
        assert len(keys) == 1 and keys[0].startswith("gw:{t.acme}:cache:")
        assert 60_000 < conn.pttl(keys[0]) <= 120_000  # fresh 60 s, kept 60 s more for stale answers
    finally:
        conn.close()


def test_redis_stopped_mid_test_bypasses_the_cache(gw, upstream, redis_server):
    client = gw.client("sk-acme")
    text, _, _ = chat(client)
    stats = gw.services.cache_stats
    assert eventually(lambda: stats.stores == 1)
    assert chat(client)[1]["x-cache"] == "HIT"
    redis_server.stop()
    for _ in range(2):
        again, headers, _ = chat(client)
        assert headers["x-cache"] == "BYPASS" and again == text
    streamed, headers, _ = chat_stream(client)
    assert headers["x-cache"] == "BYPASS" and streamed == text
    assert stats.backend_errors >= 3 and stats.bypasses == 3
    assert upstream.calls == 4
    redis_server.start()  # back, and empty
    assert chat(client)[1]["x-cache"] == "MISS"
    assert chat(client)[1]["x-cache"] == "HIT"


def test_black_holed_redis_costs_a_timeout_not_a_failure(gw, upstream, redis_server):
    client = gw.client("sk-acme")
    chat(client)
    stats = gw.services.cache_stats
    assert eventually(lambda: stats.stores == 1)  # written (after the answer was sent)
    redis_server.pause()
    try:
        _, headers, _ = chat(client)
        assert headers["x-cache"] == "BYPASS"
    finally:
        redis_server.resume()
    assert chat(client)[1]["x-cache"] == "HIT"


async def test_single_flight_still_works_while_redis_is_down(gw, upstream, redis_server):
    redis_server.stop()
    upstream.default = Fault(delay_s=0.5)
    client = gw.aclient("sk-acme", timeout=30.0)

    async def ask() -> str:
        out = await client.chat.completions.create(model="small", messages=MSG, temperature=0)
        return out.choices[0].message.content

    texts = await asyncio.gather(*(ask() for _ in range(20)))
    await client.close()
    assert set(texts) == {"Echo: what is the capital of France"} and upstream.calls == 1
