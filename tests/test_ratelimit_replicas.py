"""Four gateway replicas sharing one real Redis: limits hold for the fleet, not per replica."""

from __future__ import annotations

import asyncio

import openai
import pytest
import redis as redis_sync

from gateway.clock import FakeClock
from gateway.ratelimit.scripts import ACQUIRE
from gateway.ratelimit.window import LEASE_US, WINDOW_US
from gateway.state import RedisBackend
from tests.support.mock_openai import Fault
from tests.support.ratelimit import KEY, burst, limited_policy, redis_state

REPLICAS = 4
LONG = [{"role": "user", "content": " ".join(["lorem"] * 200)}]  # estimate 307 tokens; real 200


@pytest.fixture
def fleet(make_gateway, upstream, redis_url):
    def start(rate_limit: str, clock=None):
        # a generous backend timeout: every replica shares one test event loop, and exactness is what
        # is proven here (the fallback has its own tests); no call may have failed over, see _exact()
        state = redis_state(redis_url, replicas=REPLICAS, timeout_ms=5000)
        policy = limited_policy(upstream.url, rate_limit, state=state)
        kw = {"clock": clock} if clock is not None else {}
        return [make_gateway(policy, name=f"policy{i}.yaml", **kw) for i in range(REPLICAS)]
    return start


def _clients(gateways, per_gateway: int = 5) -> list[openai.AsyncOpenAI]:
    return [gw.aclient(KEY, timeout=30) for gw in gateways for _ in range(per_gateway)]


async def _close(clients) -> None:
    await asyncio.gather(*(c.close() for c in clients))


def _exact(gateways) -> bool:
    """Every decision came from the shared Redis (none from a failure mode)."""
    stats = [gw.services.ratelimit_stats for gw in gateways]
    return all(s.backend_errors == 0 and not any(s.failure_decisions.values()) for s in stats)


async def test_burst_of_five_times_rpm_admits_exactly_rpm(fleet, upstream):
    gateways = fleet("{rpm: 40}")
    clients = _clients(gateways)
    ok, limited, others = await burst(clients, 200)
    await _close(clients)
    assert (ok, limited, others) == (40, 160, [])
    assert upstream.calls == 40
    assert sum(gw.services.ratelimit_stats.outcomes["over_limit"] for gw in gateways) == 160
    assert _exact(gateways)


async def test_windows_slide_exactly_with_a_fake_clock(fleet, upstream):
    clock = FakeClock()
    gateways = fleet("{rpm: 10}", clock=clock)
    clients = _clients(gateways, 3)
    assert (await burst(clients, 50))[:2] == (10, 40)
    clock.advance(30)
    assert (await burst(clients, 50))[:2] == (0, 50)
    clock.advance(29.999)
    assert (await burst(clients, 50))[:2] == (0, 50)
    clock.advance(0.001)  # the first ten leave the window together
    assert (await burst(clients, 50))[:2] == (10, 40)
    clock.advance(90)
    await _close(clients)
    assert upstream.calls == 20 and _exact(gateways)


async def test_concurrent_long_requests_never_exceed_tpm(fleet, upstream):
    # each reserves 3 + 4 + 300 (prompt estimate) + 250 (max_tokens) = 557; uses 200 + 201 = 401
    gateways = fleet("{tpm: 2000}")
    clients = _clients(gateways)
    upstream.default = Fault(delay_s=1.0)  # all in flight together
    ok, limited, others = await burst(clients, 40, messages=LONG, max_tokens=250)
    assert (ok, limited, others) == (3, 37, [])  # 3 x 557 = 1671 <= 2000 < 4 x 557
    upstream.default = Fault(chunk_delay_s=0.002)
    streams = []
    for client in clients[:6]:
        try:
            stream = await client.chat.completions.create(model="small", messages=LONG, max_tokens=250, stream=True)
            streams.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
        except openai.RateLimitError:
            pass
    await _close(clients)
    # settled at 3 x 401 = 1203: one more reservation of 557 fits, a second would not
    assert len(streams) == 1 and len(streams[0].split()) == 201 and _exact(gateways)
    assert sum(len(r["messages"][0]["content"].split()) + 201 for r in upstream.requests) == 4 * 401 <= 2000


async def test_concurrency_is_shared_and_slots_are_released(fleet, upstream, redis_url):
    gateways = fleet("{concurrency: 3}")
    clients = _clients(gateways)
    upstream.default = Fault(delay_s=0.8)
    assert await burst(clients, 24) == (3, 21, [])
    await _close(clients)
    assert upstream.max_in_flight == 3 and _exact(gateways)
    client = redis_sync.Redis.from_url(redis_url)
    try:
        slots = [k for k in client.keys("*") if k.endswith(b":conc")]
        assert all(client.zcard(k) == 0 for k in slots)
        assert all(client.pttl(k) > 0 for k in client.keys("*"))
    finally:
        client.close()


async def test_a_crashed_replicas_slots_expire(fleet, upstream, redis_url):
    clock = FakeClock()
    gateways = fleet("{concurrency: 2}", clock=clock)
    # a replica took both slots and died: nobody will release or renew them
    dead = RedisBackend(redis_url, clock=clock)
    for token in ("dead.1", "dead.2"):
        taken = await dead.run(ACQUIRE, ["gw:{lim}:rl:t:conc"], [token, "0", WINDOW_US, LEASE_US, "C", 2, 1])
        assert taken[0] == 1
    await dead.close()
    client = gateways[1].aclient(KEY)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}])
    clock.advance(LEASE_US / 1e6)
    out = await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}])
    await client.close()
    assert out.choices[0].message.content == "Echo: x" and _exact(gateways)
