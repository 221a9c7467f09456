"""One state call per phase (issue 15): the round trips of a request, and the fused calls' semantics.

The end-to-end tests count the state backend calls of full-policy requests on the miss path through
the gateway's own metrics (and, on a real Redis, the scripts the server ran); the feedback record
rides ``complete``'s call, so it is stored with no call of its own. The op-level tests run
the fused calls on both backends: the memory backend's natives and the Lua composed for Redis must
answer alike, a refusal by either concern leaves nothing reserved by the other, and a settle sent
twice charges once.
"""

from __future__ import annotations

import re
import textwrap
import urllib.request
from collections.abc import AsyncIterator

import orjson
import pytest
import redis

from gateway.budget.ledger import Charge, ReserveOp, ScopeArgs, SettleOp, scope_key
from gateway.clock import FakeClock
from gateway.observability.metered import MeteredBackend
from gateway.observability.metrics import GatewayMetrics
from gateway.ratelimit.fused import AdmitOp, ReleaseOp
from gateway.state import MemoryBackend, RedisBackend, StateBackend
from gateway.state.base import StateError, hash_tag
from gateway.state.fused import SetOp
from tests.support.harness import eventually

N = 12
_COUNT = re.compile(r'^llm_gateway_state_duration_seconds_count\{op="([^"]+)"\} ([\d.e+]+)$', re.M)


def policy(upstream: str, state: str) -> str:
    """Auth, input checks, rpm/tpm/concurrency per tenant, key and model, budgets, routing, no cache."""
    return textwrap.dedent(f"""\
        version: 1
        state: {state}
        providers:
          up: {{type: openai, base_url: "{upstream}", api_key: sk-up}}
        models:
          small: {{price: {{input: 1, output: 2}}, deployments: [{{provider: up, model: small-a}}]}}
          large: {{price: {{input: 5, output: 9}}, deployments: [{{provider: up, model: large-a}}]}}
          auto: {{route: {{small: small, large: large, large_when: [{{header: {{x-tier: large}}}}]}}}}
        tenants:
          acme:
            api_keys: [{{key: sk-acme, name: main, budget: {{usd: 100}}}}]
            models: "*"
            audit: {{feedback_ttl_s: 600}}  # its record rides complete's call
            rate_limit:
              rpm: 1000
              tpm: 1000000
              concurrency: 50
              per_key: {{rpm: 500}}
              models: {{small: {{rpm: 400, tpm: 500000}}}}
            budget: {{usd: 1000, soft: 0.9, on_soft: downgrade}}
        """)


def state_counts(base: str) -> dict[str, float]:
    """The gateway's state calls so far by op (``fused``, ``set_many``...), this scrape's own included."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        return {op: float(n) for op, n in _COUNT.findall(resp.read().decode())}


def state_calls(base: str) -> float:
    return sum(state_counts(base).values())


def script_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_miss_costs_at_most_two_state_calls(kind, make_gateway, upstream, request) -> None:
    r = None
    state = "{backend: memory}"
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        state = f'{{backend: redis, redis_url: "{url}", timeout_ms: 5000}}'
        r = redis.Redis.from_url(url)
    gw = make_gateway(policy(upstream.url, state))
    client = gw.client("sk-acme")
    ask = {"model": "auto", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}
    client.chat.completions.create(**ask)  # first request: scripts loaded, plans built
    calls, scripts = state_calls(gw.url), script_calls(r) if r else 0
    for _ in range(N):
        answer = client.chat.completions.with_raw_response.create(**ask)
        assert answer.headers["x-ratelimit-limit-requests"] and answer.headers["x-ratelimit-limit-tokens"]
    ran = script_calls(r) - scripts if r else 0  # read before the scrapes below (their gauges run scripts)
    after = state_calls(gw.url)
    scrape = state_calls(gw.url) - after  # what one scrape itself reads (the gauges), nothing else ran
    per_request = (after - calls - scrape) / N
    assert per_request <= 2, f"{per_request} state calls per request"
    if r is not None:  # one call at a time: each call is one round trip; each runs one script
        assert ran / N <= 2


def test_on_redis_a_request_is_two_calls_and_its_record_is_stored_by_the_second(make_gateway, upstream,
                                                                                 redis_url) -> None:
    """Admit and complete are the only calls; the record is in Redis with no batch (``set_many``)
    sent, and another replica's ``/v1/feedback`` finds it."""
    state = f'{{backend: redis, redis_url: "{redis_url}", timeout_ms: 5000}}'
    gw = make_gateway(policy(upstream.url, state))
    other = make_gateway(policy(upstream.url, state), name="other.yaml")
    r = redis.Redis.from_url(redis_url)
    client = gw.client("sk-acme")
    ask = {"model": "auto", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}
    client.chat.completions.create(**ask)  # scripts loaded, plans built
    before = state_counts(gw.url)
    ids = [f"rides-{i}" for i in range(N)]
    for request_id in ids:
        client.chat.completions.create(**ask, extra_headers={"x-request-id": request_id})
    try:  # ``complete`` runs just after the answer was written: its call stores the record
        assert eventually(lambda: all(r.exists(f"gw:{{acme}}:req:{i}") for i in ids))
        assert 0 < r.pttl(f"gw:{{acme}}:req:{ids[-1]}") <= 600_000
    finally:
        r.close()
    after = state_counts(gw.url)
    scrape = state_calls(gw.url) - sum(after.values())  # what one scrape itself reads (the gauges)
    assert (sum(after.values()) - sum(before.values()) - scrape) / N == 2
    assert after["fused"] - before["fused"] == 2 * N
    assert after.get("set_many", 0) == 0  # no record went through the batch writer
    req = urllib.request.Request(other.base_url + "/feedback", method="POST", data=orjson.dumps(
        {"request_id": ids[-1], "score": 1}), headers={"Authorization": "Bearer sk-acme",
                                                      "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201 and orjson.loads(resp.read())["route"] == "small"


# -- the fused calls on both backends -------------------------------------------------------------
CLOCK_T = 1_800_000_000.0


@pytest.fixture(params=["memory", "redis"])
async def backend(request) -> AsyncIterator[StateBackend]:
    clock = FakeClock(CLOCK_T)
    if request.param == "memory":
        yield MemoryBackend(clock=clock)
        return
    found = RedisBackend(request.getfixturevalue("redis_url"), timeout_ms=5000, clock=clock)
    yield found
    await found.close()


TAG = hash_tag("gw", "acme")
BUDGET = ScopeArgs(scope_key("gw", "acme", "t", "total"), limit=1000, soft=None, enforce=True, downgrade=False,
                   ttl_ms=0)
TPM = (f"{TAG}:rl:t:tpm", f"{TAG}:rl:t:tpm:w")
RPM = f"{TAG}:rl:t:rpm"


def admit(token: str, tokens: int, tpm: int, rpm: int = 10) -> AdmitOp:
    return AdmitOp(token, False, [("R", rpm, 1, RPM, ""), ("T", tpm, tokens, *TPM)], None, keep=False)


async def reserve_and_admit(backend: StateBackend, rid: str, cost: int, tokens: int, tpm: int) -> list:
    return await backend.run_fused([ReserveOp([BUDGET], rid, 60.0, cost, None), admit(rid, tokens, tpm)])


async def test_a_rate_limit_refusal_undoes_the_reservation_in_the_same_call(backend) -> None:
    ok = await reserve_and_admit(backend, "r1", 300, 50, tpm=100)
    refused = await reserve_and_admit(backend, "r2", 300, 80, tpm=100)  # 50 + 80 tokens > 100
    after = await backend.run_fused([ReserveOp([BUDGET], "r3", 60.0, 0, None)])  # reads the levels
    assert [str(x) for x in ok[0][:4]] == ["main", "0", "0", "0"] and ok[1][:2] == [0, 1]
    assert refused[1][:2] == [0, 0]  # the tpm limit refused ...
    assert [int(x) for x in after[0][2:]] == [0, 300]  # ... and only r1's 300 is held: r2's was undone


async def test_a_budget_refusal_takes_no_rate_limit(backend) -> None:
    refused = await reserve_and_admit(backend, "r1", 5000, 10, tpm=100)  # over the 1000 budget
    ok = await reserve_and_admit(backend, "r2", 100, 100, tpm=100)  # the whole tpm: nothing was taken
    assert str(refused[0][0]) == "over" and refused[1] == []
    assert ok[1][:2] == [0, 1] and ok[1][3] == 1  # rpm used: 1 (r2 only)


async def test_a_downgrade_reserves_the_small_models_tokens(backend) -> None:
    small_tpm = (f"{TAG}:rl:m:small:tpm", f"{TAG}:rl:m:small:tpm:w")
    scope = ScopeArgs(BUDGET.key, limit=1000, soft=100, enforce=True, downgrade=True, ttl_ms=0)
    await backend.run_fused([ReserveOp([scope], "r0", 60.0, 150, None)])  # past the soft threshold
    op = AdmitOp("r1", False, [("T", 1000, 40, *TPM)], [("T", 1000, 40, *small_tpm)], keep=False)
    reply = await backend.run_fused([ReserveOp([scope], "r1", 60.0, 500, 20), op])
    assert str(reply[0][0]) == "alt" and reply[1][0] == 1  # the small model's entries were used
    assert reply[1][1] == 1 and reply[1][3] == 40


async def test_a_fused_settle_sent_twice_charges_once(backend) -> None:
    day = f"{TAG}:spend:2027-01-15"
    charge = Charge("r1", 120, (BUDGET.key,), (0,), day, 60_000, (("small:usd", 120), ("small:n", 1)))
    release = ReleaseOp("r1", (), [TPM], 30)

    await reserve_and_admit(backend, "r1", 300, 50, tpm=100)
    first = await backend.run_fused([SettleOp(charge, 60_000), release])
    again = await backend.run_fused([SettleOp(charge, 60_000), release])  # a replay of an unknown outcome
    assert [str(x) for x in first[0]] == ["ok", "120", "0"] and first[1] == 1
    assert [str(x) for x in again[0]] == ["dup", "120", "0"]


async def test_a_fused_set_replaces_value_and_expiry(backend, request) -> None:
    key = f"{TAG}:req:r1"
    await backend.set(key, b"old")  # no expiry
    assert await backend.run_fused([SetOp(key, b'["small"]', 30.0)]) == [1]
    assert await backend.get(key) == b'["small"]'
    if isinstance(backend, MemoryBackend):
        assert backend.store.ttl(key) == pytest.approx(30, abs=1)
        return
    r = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    try:
        assert 29_000 < r.pttl(key) <= 30_000
    finally:
        r.close()


async def test_the_metered_memory_backend_times_its_fused_call_and_honours_an_override() -> None:
    """The metered memory backend runs the natives without awaiting the inner call, counted all the
    same; a subclass that overrides ``run_fused`` (a double that fails) is still what runs."""

    class Down(MemoryBackend):
        async def run_fused(self, ops: list) -> list:
            raise StateError("down")

    metrics = GatewayMetrics()
    metered = MeteredBackend(MemoryBackend(), metrics)
    assert await metered.run_fused([SetOp(f"{TAG}:k", b"v", 30.0)]) == [1]
    assert await metered.get(f"{TAG}:k") == b"v"
    with pytest.raises(StateError):
        await MeteredBackend(Down(), metrics).run_fused([SetOp(f"{TAG}:k", b"w", 30.0)])
    duration, errors = metrics.state_duration.labels("fused"), metrics.state_errors.labels("fused")
    assert sum(duration.counts) == 2 and errors.value == 1
