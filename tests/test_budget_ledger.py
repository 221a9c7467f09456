"""The ledger's reserve/settle scripts on both backends: same answers, limits held, holds expire."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from gateway.budget.ledger import MAX_PURGE, Charge, Ledger, ScopeArgs
from gateway.clock import FakeClock
from gateway.state import MemoryBackend, RedisBackend

LIMIT = 1_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_750_000_000.0)


@pytest.fixture(params=["memory", "redis"])
async def ledger(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Ledger]:
    if request.param == "memory":
        yield Ledger(MemoryBackend(clock=clock))
        return
    backend = RedisBackend(request.getfixturevalue("redis_url"), clock=clock)
    yield Ledger(backend)
    await backend.close()


def scope(key: str = "gw:{t}:bud:t:d1", limit: int = LIMIT, soft: int | None = None, enforce: bool = True,
          downgrade: bool = False) -> ScopeArgs:
    return ScopeArgs(key, limit, soft, enforce, downgrade, ttl_ms=3_600_000)


def charge(rid: str, cost: int, *scopes: ScopeArgs, fields: tuple = ()) -> Charge:
    return Charge(rid, cost, tuple(s.key for s in scopes), tuple(s.ttl_ms for s in scopes), "gw:{t}:spend:day",
                  86_400_000 if fields else 0, fields)


async def test_reserve_admits_until_the_limit_then_refuses(ledger: Ledger):
    s = scope()
    for i in range(3):
        r = await ledger.reserve([s], f"r{i}", 60, 300, None)
        assert (r.verdict, r.over, r.levels) == ("main", 0, ((0, 300 * i),))
    refused = await ledger.reserve([s], "r3", 60, 101, None)
    assert (refused.verdict, refused.over, refused.levels) == ("over", 1, ((0, 900),))
    exact = await ledger.reserve([s], "r4", 60, 100, None)  # spent + held + amount == limit fits
    assert exact.verdict == "main"


async def test_settle_releases_the_hold_and_adds_the_real_cost(ledger: Ledger):
    s = scope()
    await ledger.reserve([s], "a", 60, 500, None)
    assert await ledger.settle(charge("a", 123, s)) == [(123, 0)]
    assert await ledger.settle(charge("a", 0, s)) == [(123, 0)]  # settling twice releases nothing more
    r = await ledger.reserve([s], "b", 60, 877, None)
    assert r.verdict == "main" and r.levels == ((123, 0),)
    assert (await ledger.reserve([s], "c", 60, 1, None)).verdict == "over"


async def test_day_record_fields_are_added(ledger: Ledger):
    s = scope()
    fields = (("small:usd", 40), ("small:n", 1))
    await ledger.settle(charge("x", 40, s, fields=fields))
    await ledger.settle(charge("y", 2, s, fields=(("small:usd", 2), ("small:n", 1), ("small:est", 1))))
    [day, bucket] = await ledger.read(["gw:{t}:spend:day", s.key])
    assert day == {"small:usd": 42, "small:n": 2, "small:est": 1}
    assert bucket == {"spent": 42}  # no reservation was ever held here
    assert await ledger.read(["gw:{t}:spend:nothing"]) == [{}]


async def test_a_crashed_replicas_reservation_expires(ledger: Ledger, clock: FakeClock):
    s = scope()
    await ledger.reserve([s], "lost", 30, 900, None)  # its replica never settles
    assert (await ledger.reserve([s], "next", 30, 200, None)).verdict == "over"
    clock.advance(31)
    r = await ledger.reserve([s], "next", 30, 200, None)
    assert r.verdict == "main" and r.levels == ((0, 0),)
    assert await ledger.settle(charge("lost", 50, s)) == [(50, 200)]  # a late settle still charges, releases nothing


async def test_a_reservation_is_released_at_its_expiry_not_after(ledger: Ledger, clock: FakeClock):
    s = scope()
    await ledger.reserve([s], "lost", 30, 900, None)
    clock.advance(29)
    assert (await ledger.reserve([s], "early", 30, 0, None)).levels == ((0, 900),)
    clock.advance(1)  # now == its expiry: released, as ZRANGEBYSCORE -inf now includes it
    assert (await ledger.reserve([s], "due", 30, 0, None)).levels == ((0, 0),)


async def test_expired_reservations_go_oldest_first_at_most_max_purge_per_reserve(ledger: Ledger, clock: FakeClock):
    """Both backends release the same expired holds, in expiry order, ``MAX_PURGE`` per scope per call
    (the memory twin keeps them in a sorted set: no scan of the live ones)."""
    s = scope(limit=10**9)
    for i in range(MAX_PURGE + 5):  # each expires one second after the one before; 10 of each
        await ledger.reserve([s], f"lost{i:03}", 30 + i, 10, None)
    live = await ledger.reserve([s], "live", 3600, 1, None)
    assert live.levels == ((0, 10 * (MAX_PURGE + 5)),)
    clock.advance(30 + MAX_PURGE + 10)  # every lost one has expired, "live" has not
    first = await ledger.reserve([s], "a", 3600, 0, None)
    assert first.levels == ((0, 10 * 5 + 1),)  # the oldest MAX_PURGE went, 5 are left
    second = await ledger.reserve([s], "b", 3600, 0, None)
    assert second.levels == ((0, 1),)  # the rest went next; the live hold stays
    assert await ledger.settle(charge("live", 1, s)) == [(1, 0)]


async def test_downgrade_past_soft_and_instead_of_refusing(ledger: Ledger):
    s = scope(soft=500, downgrade=True)
    assert (await ledger.reserve([s], "a", 60, 400, 100)).verdict == "main"  # level 0: under soft
    assert (await ledger.reserve([s], "b", 60, 150, 100)).verdict == "main"  # level 400: under soft
    r = await ledger.reserve([s], "c", 60, 400, 100)
    assert r.verdict == "alt" and r.levels == ((0, 550),)  # past soft: the small model's reservation
    assert (await ledger.reserve([s], "d", 60, 400, 450)).verdict == "over"  # 650 + 450 > 1000
    hard = scope(key="gw:{t}:bud:t:d2", downgrade=True)  # no soft: downgrade only instead of refusing
    assert (await ledger.reserve([hard], "e", 60, 900, 100)).verdict == "main"
    assert (await ledger.reserve([hard], "f", 60, 900, 100)).verdict == "alt"
    assert (await ledger.reserve([hard], "g", 60, 900, None)).verdict == "over"
    [bucket] = await ledger.read([hard.key])
    assert (bucket["held"], bucket["r:e"], bucket["r:f"]) == (1000, 900, 100)


async def test_shadow_scope_never_refuses_but_reports_its_level(ledger: Ledger):
    s = scope(enforce=False, limit=100)
    for i in range(3):
        r = await ledger.reserve([s], f"s{i}", 60, 80, None)
        assert r.verdict == "main" and r.levels == ((0, 80 * i),)


async def test_the_tightest_of_two_scopes_refuses(ledger: Ledger):
    tenant, key = scope(), scope(key="gw:{t}:bud:k|ops:d1", limit=300)
    assert (await ledger.reserve([tenant, key], "a", 60, 250, None)).verdict == "main"
    r = await ledger.reserve([tenant, key], "b", 60, 100, None)
    assert (r.verdict, r.over, r.levels) == ("over", 2, ((0, 250), (0, 250)))
    assert await ledger.settle(charge("a", 10, tenant, key)) == [(10, 0), (10, 0)]


async def test_two_scopes_on_one_key_hold_and_settle_twice_there(ledger: Ledger):
    """Not a shape the gateway sends, but the twin must still do what the script does, key by key."""
    s = scope()
    r = await ledger.reserve([s, s], "a", 60, 100, None)
    assert r.verdict == "main" and r.levels == ((0, 0), (0, 0))
    [bucket] = await ledger.read([s.key])
    assert (bucket["held"], bucket["r:a"]) == (200, 100)
    assert await ledger.settle(charge("a", 7, s, s)) == [(14, 100), (14, 100)]


async def test_twins_agree_on_a_random_history(redis_url: str, clock: FakeClock):
    """The Lua script and its Python twin give identical replies to the same operations."""
    memory, redis = Ledger(MemoryBackend(clock=clock)), Ledger(RedisBackend(redis_url, clock=clock))
    rng = random.Random(7)
    scopes = [scope(soft=600, downgrade=True), scope(key="gw:{t}:bud:k|a:d1", limit=700)]
    try:
        live: list[str] = []
        for i in range(300):
            if live and rng.random() < 0.45:
                rid = live.pop(rng.randrange(len(live)))
                c = charge(rid, rng.randrange(0, 200), *scopes, fields=(("m:usd", 3),))
                assert await memory.settle(c) == await redis.settle(c)
            else:
                args = (scopes[: rng.randint(1, 2)], f"r{i}", rng.choice([5, 50]), rng.randrange(1, 300),
                        rng.choice([None, rng.randrange(1, 100)]))
                a, b = await memory.reserve(*args), await redis.reserve(*args)
                assert a == b
                if a.verdict != "over":
                    live.append(f"r{i}")
            clock.advance(rng.choice([0, 1, 7]))
        keys = [s.key for s in scopes] + ["gw:{t}:spend:day"]
        assert await memory.read(keys) == await redis.read(keys)
    finally:
        await redis.backend.close()


async def test_concurrent_reservations_never_overshoot_on_redis(redis_url: str):
    backends = [RedisBackend(redis_url, timeout_ms=5000) for _ in range(4)]  # four replicas, server time
    ledgers = [Ledger(b) for b in backends]
    s = scope(limit=10_000)
    rng = random.Random(3)
    try:
        amounts = [rng.randrange(1, 500) for _ in range(200)]
        results = await asyncio.gather(*(ledgers[i % 4].reserve([s], f"c{i}", 60, amount, None)
                                         for i, amount in enumerate(amounts)))
        admitted = sum(a for a, r in zip(amounts, results, strict=True) if r.verdict == "main")
        assert 0 < admitted <= 10_000
        [bucket] = await ledgers[0].read([s.key])
        assert bucket["held"] == admitted
        assert any(r.verdict == "over" for r in results)
    finally:
        for b in backends:
            await b.close()
