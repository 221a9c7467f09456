"""Idempotent settlement: a settle, a lease release or a token correction applied twice counts once.

A call that timed out is "unknown" (Redis may have applied it after the client gave up), so it is
replayed, and the replay must change nothing when the first attempt did apply. The last test stalls a
real redis-server with ``DEBUG SLEEP 1`` while requests settle and while charges are replayed, and
compares the ledger with the sum computed independently from what the upstream served.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from gateway.budget.ledger import Charge, Ledger, ScopeArgs
from gateway.budget.service import BudgetService
from gateway.clock import FakeClock
from gateway.ratelimit.scripts import ACQUIRE, RELEASE
from gateway.ratelimit.window import LEASE_US, WINDOW_US
from gateway.state import MemoryBackend, RedisBackend, StateError
from tests.support.budget import PRICES, budget_policy
from tests.support.mock_openai import Fault, answer_for, usage_for
from tests.support.redis_server import RedisServer, redis_binary

MSG = [{"role": "user", "content": "please summarise the quarterly report for the board in plain words"}]
SCOPE = ScopeArgs("gw:{t}:bud:t:d1", 10_000, None, True, False, 3_600_000)


def charge(rid: str, cost: int) -> Charge:
    return Charge(rid, cost, (SCOPE.key,), (SCOPE.ttl_ms,), "gw:{t}:spend:day", 86_400_000,
                  (("small:usd", cost), ("small:n", 1)))


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> Any:
    clock = FakeClock(1_750_000_000.0)
    if request.param == "memory":
        yield MemoryBackend(clock=clock, dlq_path=None)
        return
    b = RedisBackend(request.getfixturevalue("redis_url"), clock=clock, timeout_ms=5000)
    yield b
    await b.close()


async def test_settling_twice_charges_once(backend):
    ledger = Ledger(backend)
    await ledger.reserve([SCOPE], "a", 60, 500, None)
    assert await ledger.settle_once(charge("a", 123)) == (True, [(123, 0)])
    assert await ledger.settle_once(charge("a", 123)) == (False, [(123, 0)])  # the same answer, nothing added
    [day] = await ledger.read(["gw:{t}:spend:day"])
    assert day == {"small:usd": 123, "small:n": 1}


class LostAnswer:
    """A backend whose next ``lose`` script calls apply, then raise: a timeout after Redis applied it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.kind, self.lose = inner, inner.kind, 0

    async def run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        reply = await self.inner.run(script, keys, args)
        if self.lose:
            self.lose -= 1
            raise StateError("Timeout reading from socket")
        return reply


async def test_a_settle_whose_answer_was_lost_is_replayed_harmlessly(backend):
    flaky = LostAnswer(backend)
    service = BudgetService(flaky)  # type: ignore[arg-type]
    flaky.lose = 1
    await service.settle(charge("a", 40), service.shared)  # applied, but the caller saw a timeout
    assert service.counts["settle_failed"] == 1 and len(service.pending) == 1
    await service.settle(charge("b", 2), service.shared)  # succeeds, then replays "a"
    print(f"\ncounts={dict(service.counts)}")
    assert service.counts["settle_duplicate"] == 1 and not service.pending
    [bucket] = await service.shared.read([SCOPE.key])
    assert bucket["spent"] == 42


async def test_lease_release_and_token_correction_are_idempotent(backend):
    conc, tpm, tpmw = "t:{acme}:rl:conc", "t:{acme}:rl:tpm", "t:{acme}:rl:tpm:w"
    take = ["a", "0", WINDOW_US, LEASE_US, "C", 2, 1, "T", 100, 80]
    assert (await backend.run(ACQUIRE, [conc, tpm, tpmw], take))[0] == 1
    release = [conc, tpm, tpmw], ["a", "C", 0, "T", 12]
    await backend.run(RELEASE, *release)
    await backend.run(RELEASE, *release)  # a replay of a release whose answer was lost
    peek = await backend.run(ACQUIRE, [tpm, tpmw], ["p", "0", WINDOW_US, LEASE_US, "P", 100, 1])
    assert peek[2] == 12  # corrected to 12 once (a correction sets the value, it adds nothing)
    assert (await backend.run(ACQUIRE, [conc], ["q", "0", WINDOW_US, LEASE_US, "C", 1, 1]))[0] == 1  # slot free


# -- DEBUG SLEEP against a gateway ----------------------------------------------------------------
@pytest.fixture
def debug_redis() -> Iterator[RedisServer]:
    if redis_binary() is None:
        pytest.skip("redis-server binary not found")
    server = RedisServer(extra_args=("--enable-debug-command", "local", "--appendonly", "yes",
                                     "--appendfsync", "always"))
    server.start()
    yield server
    server.cleanup()


def stall(url: str, seconds: int = 1) -> threading.Thread:
    def run() -> None:
        with redis.Redis.from_url(url, socket_timeout=10) as r:
            r.execute_command("DEBUG", "SLEEP", str(seconds))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def pico_cost(body: dict) -> int:
    usage = usage_for(body, answer_for(body))
    inp, out = PRICES["small"]
    return int(usage["prompt_tokens"] * inp * 10**6 + usage["completion_tokens"] * out * 10**6)


def test_debug_sleep_during_settles_and_replays_charges_each_request_once(make_gateway, upstream, debug_redis):
    state = f"backend: redis\n  redis_url: {debug_redis.url}\n  on_backend_error: local"
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 100}", state=state).replace(
        "timeout_ms: 5000", "timeout_ms: 250"))
    client, service = gw.client("sk-acme"), gw.services.budget
    rounds, per_round = 6, 2
    client.chat.completions.create(model="small", messages=MSG, max_tokens=5)  # the scripts are loaded
    for _ in range(rounds):
        upstream.push(*[Fault(delay_s=0.4)] * per_round)
        threads = [threading.Thread(target=client.chat.completions.create,
                                    kwargs={"model": "small", "messages": MSG, "max_tokens": 5})
                   for _ in range(per_round)]
        for t in threads:
            t.start()
        time.sleep(0.2)  # reserved, waiting for the upstream; their settles land in the stall
        sleeper = stall(debug_redis.url)
        time.sleep(0.1)
        replay = gw.thread.call(_start_replay(service))  # the earlier rounds' charges, replayed into it
        for t in [*threads, sleeper]:
            t.join(15)
        gw.thread.call(_wait(replay))
    deadline = time.monotonic() + 10
    while service.pending and time.monotonic() < deadline:
        gw.thread.call(service.replay())
    r = redis.Redis.from_url(debug_redis.url)
    [key] = [k for k in r.keys("*:bud:t:*") if not k.endswith(b":exp")]
    spent = int(r.hget(key, "spent"))
    day = {k.decode(): int(v) for k, v in r.hgetall(next(iter(r.keys("*:spend:*")))).items()}
    expected = sum(pico_cost(b) for b in upstream.requests)
    print(f"\nrequests={rounds * per_round + 1} stalls={rounds} upstream_calls={upstream.calls} ledger_pico={spent} "
          f"independent_pico={expected} day_n={day.get('small:n')} counts={dict(service.counts)}")
    assert upstream.calls == rounds * per_round + 1
    assert not service.pending
    assert spent == expected and day["small:usd"] == expected and day["small:n"] == rounds * per_round + 1
    assert service.counts["settle_duplicate"] >= 1  # stalled settles did apply, and their replays did nothing


async def _start_replay(service: BudgetService) -> Any:
    import asyncio

    return asyncio.ensure_future(service.replay())


async def _wait(task: Any) -> None:
    await task
