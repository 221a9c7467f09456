"""Redis dies mid-test: each ``state.on_backend_error`` mode does what it says, nothing hangs, and the
limits are exact again once Redis is back."""

from __future__ import annotations

import time

import openai
import pytest

from gateway.clock import FakeClock
from tests.support.ratelimit import KEY, burst, limited_policy, redis_state

TIMEOUT_MS = 1000  # a killed Redis refuses at once; the black-hole test uses a short one


def _stats(gateways):
    return [gw.services.ratelimit_stats for gw in gateways]


def _hold(gateways) -> float:
    """How long a replica leaves a failed backend alone (real time) before trying it again."""
    from gateway.http.server import PIPELINE
    from gateway.stages.ratelimit import RateLimitStage

    stages = [s for gw in gateways for s in gw.app[PIPELINE].stages if isinstance(s, RateLimitStage)]
    return max(s.guard.hold_s for s in stages)


@pytest.fixture
def pair(make_gateway, upstream, redis_url):
    """Two replicas on one Redis, a shared fake clock, rpm 10 (5 each in the local fallback)."""
    def start(mode: str, timeout_ms: int = TIMEOUT_MS):
        clock = FakeClock()
        state = redis_state(redis_url, on_error=mode, replicas=2, timeout_ms=timeout_ms)
        policy = limited_policy(upstream.url, "{rpm: 10}", state=state)
        gateways = [make_gateway(policy, name=f"p{i}.yaml", clock=clock) for i in range(2)]
        return gateways, clock
    return start


async def _recover_and_check_exact(gateways, clock, redis_server) -> None:
    """Redis back: after the hold, one fleet-wide window again (requests alternate between replicas;
    concurrent exactness is proven in test_ratelimit_replicas)."""
    redis_server.start()
    time.sleep(_hold(gateways) + 0.1)
    clock.advance(60)
    errors_before = [s.backend_errors for s in _stats(gateways)]
    clients = [gw.aclient(KEY) for gw in gateways]
    codes = [(await burst([clients[i % 2]], 1))[:2] for i in range(16)]
    for c in clients:
        await c.close()
    assert codes == [(1, 0)] * 10 + [(0, 1)] * 6
    assert [s.backend_errors for s in _stats(gateways)] == errors_before


async def test_local_fallback_divides_the_limit_then_recovers(pair, redis_server):
    gateways, clock = pair("local")
    clients = [gw.aclient(KEY) for gw in gateways for _ in range(3)]
    assert (await burst(clients, 30))[:2] == (10, 20)
    redis_server.stop()
    clock.advance(60)
    ok, limited, others = await burst(clients, 30)
    for c in clients:
        await c.close()
    assert (ok, limited, others) == (10, 20, [])  # 5 per replica (10 / replicas 2)
    stats = _stats(gateways)
    assert all(s.backend_errors >= 1 and s.failure_decisions["local"] >= 15 for s in stats)
    assert sum(s.outcomes["failure_mode_allowed"] for s in stats) == 10
    await _recover_and_check_exact(gateways, clock, redis_server)


async def test_allow_fails_open_and_counts(pair, redis_server, upstream):
    gateways, clock = pair("allow")
    redis_server.stop()
    clients = [gw.aclient(KEY) for gw in gateways]
    ok, limited, others = await burst(clients, 30)
    for c in clients:
        await c.close()
    assert (ok, limited, others) == (30, 0, [])
    stats = _stats(gateways)
    assert sum(s.failure_decisions["allow"] for s in stats) == 30
    assert sum(s.outcomes["failure_mode_allowed"] for s in stats) == 30
    await _recover_and_check_exact(gateways, clock, redis_server)


async def test_deny_fails_closed_with_503_and_retry_after(pair, redis_server, upstream):
    gateways, clock = pair("deny")
    redis_server.stop()
    with pytest.raises(openai.InternalServerError) as exc:
        gateways[0].client(KEY).chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 503 and exc.value.code == "rate_limit_unavailable"
    assert exc.value.response.headers["retry-after"] == "1"
    assert upstream.calls == 0 and _stats(gateways)[0].failure_decisions["deny"] == 1
    assert _stats(gateways)[0].outcomes["failure_mode_denied"] == 1
    await _recover_and_check_exact(gateways, clock, redis_server)


async def test_a_black_holed_redis_never_hangs_a_request(pair, redis_server):
    gateways, clock = pair("local", timeout_ms=300)
    client = gateways[0].client(KEY, timeout=10)
    client.chat.completions.create(model="small", messages=[{"role": "user", "content": "warm"}])
    redis_server.pause()  # accepts connections, never answers
    try:
        started = time.monotonic()
        slowest = 0.0
        for _ in range(4):  # the local share is 5: the warm-up went to Redis
            t0 = time.monotonic()
            client.chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}])
            slowest = max(slowest, time.monotonic() - t0)
        elapsed = time.monotonic() - started
        # every wait is bounded by a backend timeout (other stages have their own), never the client's 10 s
        assert slowest < 5.0
        stats = _stats(gateways)[0]
        assert stats.failure_decisions["local"] == 4
        # after a timeout the limiter leaves Redis alone for its hold: at most one timeout per hold period
        assert stats.backend_errors <= 1 + elapsed / _hold(gateways)
    finally:
        redis_server.resume()
    await _recover_and_check_exact(gateways, clock, redis_server)
