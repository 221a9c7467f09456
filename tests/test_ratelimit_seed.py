"""The ``local`` rate-limit fallback starts from the use last read on Redis, not from zero.

The seed script's twins agree on a real redis-server; then two replicas with ``rpm: 10`` on a Redis
that goes away: a tenant that used its limit stays refused for the rest of the window, and one that
used part of it gets about what was left, shared by the replicas (figures printed).
"""

from __future__ import annotations

import openai
import pytest

from gateway.clock import FakeClock
from gateway.ratelimit.scripts import ACQUIRE
from gateway.ratelimit.seed import SEED
from gateway.ratelimit.window import LEASE_US, WINDOW_US
from gateway.state import MemoryBackend, RedisBackend
from tests.support.ratelimit import KEY, MSG, limited_policy, redis_state

RPM, TPM, TPMW = "t:{acme}:rl:rpm", "t:{acme}:rl:tpm", "t:{acme}:rl:tpm:w"


async def test_the_seed_twins_agree(redis_url):
    clock = FakeClock(1_750_000_000.0)
    memory, redis_ = MemoryBackend(clock=clock, dlq_path=None), RedisBackend(redis_url, clock=clock)
    try:
        for backend in (memory, redis_):
            await backend.run(ACQUIRE, [RPM, TPM, TPMW], ["a", "0", WINDOW_US, LEASE_US, "R", 10, 1, "T", 100, 30])
        steps = [("R", 4, "T", 50), ("R", 2, "T", 0), ("R", 0, "T", 7)]
        for r, rn, t, tn in steps:
            clock.advance(1)
            peek = ["p", "0", WINDOW_US, LEASE_US, "P", 100, 1]
            for backend in (memory, redis_):
                await backend.run(SEED, [RPM, TPM, TPMW], [clock.time(), r, rn, t, tn])
            got = [[await b.run(ACQUIRE, [RPM], ["x", "0", WINDOW_US, LEASE_US, "R", 100, 0]),
                    await b.run(ACQUIRE, [TPM, TPMW], peek)] for b in (memory, redis_)]
            print(f"\nseed rpm {rn} tpm {tn}: memory {got[0]} redis {got[1]}")
            assert got[0] == got[1]
            assert got[0][1][2] == 30 + tn  # the token window holds the request's 30 plus the seed
    finally:
        await redis_.close()


def served(gw, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            gw.client(KEY).chat.completions.create(model="small", messages=MSG)
            ok += 1
        except openai.RateLimitError:
            pass
    return ok


@pytest.mark.parametrize("before", [10, 6])
def test_an_outage_admits_only_what_the_window_had_left(make_gateway, upstream, redis_server, before):
    policy = limited_policy(upstream.url, "{rpm: 10}", state=redis_state(redis_server.url, replicas=2))
    a, b = make_gateway(policy, name="a.yaml"), make_gateway(policy, name="b.yaml")
    first = sum(served(gw, 1) for i in range(before) for gw in [(a, b)[i % 2]])
    redis_server.stop()
    during = {"A": served(a, 6), "B": served(b, 6)}
    total = first + sum(during.values())
    print(f"\nrpm 10, 2 replicas: {first} served before the outage, during it {during}: {total} in the window "
          f"(from zero it would be {first} + 10)")
    assert first == before and total <= 10
    if before < 10:
        assert during["A"] + during["B"] >= 1
