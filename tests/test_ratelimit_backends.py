"""The limiter's scripts: one behaviour suite, run on the memory twin and on a real Redis.

Every test drives the atomic scripts through ``StateBackend.run`` with a fake clock (the Redis backend
hands the fake time to Lua), so the sliding-window maths is checked to the millisecond on both.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis as redis_sync
from redis.crc import key_slot

from gateway.clock import FakeClock
from gateway.ratelimit.scripts import ACQUIRE, RELEASE, RENEW
from gateway.ratelimit.window import LEASE_US, WINDOW_US
from gateway.state import MemoryBackend, RedisBackend, StateBackend

TAG = "t:{acme}:rl"
RPM, CONC, TPM, TPMW = f"{TAG}:rpm", f"{TAG}:conc", f"{TAG}:tpm", f"{TAG}:tpm:w"


@dataclass
class Limiter:
    backend: StateBackend
    clock: FakeClock
    url: str | None = None

    async def acquire(self, token: str, *entries: tuple, force: bool = False) -> list[int]:
        """entries: (kind, limit, weight); keys follow the kind (R: rpm, C: conc, T/P: tpm pair)."""
        keys: list[str] = []
        args: list = [token, "1" if force else "0", WINDOW_US, LEASE_US]
        for kind, limit, weight in entries:
            keys += {"R": [RPM], "C": [CONC], "T": [TPM, TPMW], "P": [TPM, TPMW]}[kind]
            args += [kind, limit, weight]
        return await self.backend.run(ACQUIRE, keys, args)

    async def rpm(self, token: str, limit: int) -> list[int]:
        return await self.acquire(token, ("R", limit, 1))

    async def tokens(self, token: str, limit: int, weight: int) -> list[int]:
        return await self.acquire(token, ("T", limit, weight))

    async def release(self, token: str, slot: bool = False, actual: int | None = None) -> None:
        keys, args = [], [token]
        if slot:
            keys, args = [CONC], [token, "C", 0]
        if actual is not None:
            keys += [TPM, TPMW]
            args += ["T", actual]
        await self.backend.run(RELEASE, keys, args)


@pytest.fixture(params=["memory", "redis"])
async def lim(request) -> AsyncIterator[Limiter]:
    clock = FakeClock()
    if request.param == "memory":
        yield Limiter(MemoryBackend(clock=clock, dlq_path=None), clock)
        return
    url = request.getfixturevalue("redis_url")
    backend = RedisBackend(url, clock=clock, timeout_ms=5000)  # exactness here; timeouts: outage tests
    try:
        yield Limiter(backend, clock, url)
    finally:
        await backend.close()


async def test_rpm_admits_exactly_the_limit_then_waits_for_the_oldest(lim):
    results = [await lim.rpm(f"r{i}", 5) for i in range(8)]
    assert [r[0] for r in results] == [1] * 5 + [0] * 3
    assert results[4][2:] == [5, 60000, 0]  # used, reset_ms, over
    assert results[5][:2] == [0, 60000] and results[5][2:] == [5, 60000, 1]
    lim.clock.advance(59.999)
    assert (await lim.rpm("x", 5))[:2] == [0, 1]  # exact to the millisecond
    lim.clock.advance(0.001)
    assert (await lim.rpm("y", 5))[0] == 1


async def test_sliding_window_never_lets_twice_the_limit_through_a_boundary(lim):
    for i in range(3):
        assert (await lim.rpm(f"a{i}", 6))[0] == 1
    lim.clock.advance(30)
    for i in range(3):
        assert (await lim.rpm(f"b{i}", 6))[0] == 1
    assert (await lim.rpm("c", 6))[:2] == [0, 30000]
    lim.clock.advance(30)  # the first three leave the window; the last three are still in it
    got = [(await lim.rpm(f"d{i}", 6))[0] for i in range(6)]
    assert got == [1, 1, 1, 0, 0, 0]


async def test_retry_after_names_the_next_admission_exactly(lim):
    for i in range(4):
        await lim.rpm(f"a{i}", 4)
        lim.clock.advance(2.5)
    rejected = await lim.rpm("late", 4)
    assert rejected[:2] == [0, 50000]  # first entry at t=0, now t=10: frees at 60
    lim.clock.advance(rejected[1] / 1000)
    assert (await lim.rpm("now", 4))[0] == 1


async def test_random_arrivals_never_exceed_the_limit_in_any_window(lim):
    rng = random.Random(7)
    admitted: list[float] = []
    start = lim.clock.time()
    for i in range(240):
        lim.clock.advance(rng.choice((0.0, 0.01, 0.4, 1.7)))
        if (await lim.rpm(f"q{i}", 10))[0] == 1:
            admitted.append(lim.clock.time() - start)
    for t in admitted:  # every window (t - 60, t] holds at most 10 admissions
        assert sum(1 for u in admitted if t - 60 < u <= t) <= 10
    assert len(admitted) > 10


async def test_tokens_reserve_and_refuse_with_the_exact_wait(lim):
    assert (await lim.tokens("a", 100, 40))[:3] == [1, 0, 40]
    lim.clock.advance(10)
    assert (await lim.tokens("b", 100, 50))[:3] == [1, 0, 90]
    over = await lim.tokens("c", 100, 30)
    assert over[:2] == [0, 50000]  # needs 20 freed: "a" (40) leaves at 60, now is 10
    assert over[2:] == [90, 60000, 1]


async def test_a_request_larger_than_the_limit_can_never_fit(lim):
    assert (await lim.tokens("huge", 100, 101))[:2] == [0, -1]


async def test_reconcile_returns_unused_tokens_to_the_window(lim):
    await lim.tokens("a", 100, 80)
    assert (await lim.tokens("b", 100, 30))[0] == 0
    await lim.release("a", actual=12)
    assert (await lim.tokens("b", 100, 30))[:3] == [1, 0, 42]


async def test_reconcile_after_the_window_does_not_recreate_the_entry(lim):
    await lim.tokens("a", 100, 80)
    lim.clock.advance(61)
    assert (await lim.acquire("peek", ("P", 100, 1)))[2] == 0
    await lim.release("a", actual=500)
    assert (await lim.acquire("peek2", ("P", 100, 1)))[2] == 0


async def test_peek_reads_without_taking(lim):
    await lim.tokens("a", 100, 30)
    assert (await lim.acquire("p", ("P", 100, 1)))[:5] == [1, 0, 30, 60000, 0]
    assert (await lim.acquire("p2", ("P", 100, 1)))[2] == 30


async def test_concurrency_slots_are_released_and_expire(lim):
    assert [(await lim.acquire(f"c{i}", ("C", 2, 1)))[0] for i in range(3)] == [1, 1, 0]
    await lim.release("c0", slot=True)
    assert (await lim.acquire("c3", ("C", 2, 1)))[0] == 1
    # a crashed replica never releases c1/c3: its leases run out
    lim.clock.advance(LEASE_US / 1e6)
    assert [(await lim.acquire(f"d{i}", ("C", 2, 1)))[0] for i in range(3)] == [1, 1, 0]


async def test_renewed_leases_survive_and_others_expire(lim):
    await lim.acquire("live", ("C", 2, 1))
    await lim.acquire("dead", ("C", 2, 1))
    lim.clock.advance(20)
    assert await lim.backend.run(RENEW, [CONC], [LEASE_US, 2, "live", "gone"]) == 1
    lim.clock.advance(20)  # "dead" is 40 s old: expired; "live" was renewed at 20 s
    result = await lim.acquire("new", ("C", 2, 1))
    assert result[:3] == [1, 0, 2]


async def test_all_or_nothing_across_limits(lim):
    await lim.acquire("a", ("C", 1, 1))
    rejected = await lim.acquire("b", ("R", 10, 1), ("C", 1, 1))
    assert rejected[0] == 0 and rejected[2:5] == [0, 0, 0] and rejected[5:8] == [1, 0, 1]
    # the rpm log did not count the rejected request
    assert (await lim.acquire("c", ("R", 10, 1)))[2] == 1


async def test_force_commits_over_the_limit_for_shadow_mode(lim):
    await lim.rpm("a", 1)
    shadow = await lim.acquire("b", ("R", 1, 1), force=True)
    assert shadow[:3] == [2, 60000, 2]
    assert (await lim.rpm("c", 1))[:3] == [0, 60000, 2]


async def test_replicas_sharing_the_backend_see_one_window(lim):
    """Concurrent callers (as many replicas would be): the script is atomic."""
    results = await asyncio.gather(*(lim.rpm(f"p{i}", 25) for i in range(100)))
    assert sum(r[0] for r in results) == 25


async def test_every_redis_key_has_a_ttl_and_one_hash_tag(lim):
    if lim.url is None:
        pytest.skip("Redis only")
    await lim.acquire("a", ("R", 5, 1), ("C", 5, 1), ("T", 100, 10))
    await lim.backend.run(RENEW, [CONC], [LEASE_US, 1, "a"])
    await lim.release("a", slot=False, actual=3)
    client = redis_sync.Redis.from_url(lim.url)
    try:
        keys = sorted(k.decode() for k in client.keys("*"))
        assert keys == sorted([RPM, CONC, TPM, TPMW])
        assert all(0 < client.pttl(k) <= 61000 for k in keys)
        assert len({key_slot(k.encode()) for k in keys}) == 1  # one Redis Cluster slot per call
    finally:
        client.close()


async def test_redis_time_is_the_clock_when_none_is_injected(redis_url):
    backend = RedisBackend(redis_url)  # production mode: Lua reads TIME
    try:
        first = await backend.run(ACQUIRE, [RPM], ["a", "0", WINDOW_US, LEASE_US, "R", 1, 1])
        second = await backend.run(ACQUIRE, [RPM], ["b", "0", WINDOW_US, LEASE_US, "R", 1, 1])
    finally:
        await backend.close()
    assert first[0] == 1 and second[0] == 0
    assert 59000 < second[1] <= 60000


async def test_the_renewer_keeps_live_slots_and_forgets_released_ones(lim):
    from gateway.ratelimit.leases import Leases
    from gateway.ratelimit.stats import RateLimitStats

    leases = Leases(RateLimitStats())
    for token in ("long", "done"):
        await lim.acquire(token, ("C", 3, 1))
        leases.add(lim.backend, "acme", token, (CONC,))
    leases.remove(lim.backend, "acme", "done")  # completed here; its slot is released by the stage
    await lim.release("done", slot=True)
    for _ in range(4):  # two minutes of a long stream, renewed every 30 s
        lim.clock.advance(LEASE_US / 1e6 - 1)
        await leases.renew()
    assert leases.stats.lease_renewals == 4 and len(leases) == 1
    assert (await lim.acquire("probe", ("C", 3, 1)))[2] == 2  # "long" still counts, plus the probe
