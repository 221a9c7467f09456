"""Where stages meet: rate limits, cache, routing, budgets, failover, dead letters and reloads on one
request, through the openai SDK, a real loopback upstream, and a real redis-server where state matters.

Each test answers one question about the interplay by reading what the stages left behind: token
windows and concurrency slots (in the state backend), budget spend and holds (admin API), the access
log, metrics and the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import math

import openai
import orjson
import pytest

from gateway.clock import FakeClock
from gateway.tokens import prompt_tokens
from tests.support.interplay import (
    State,
    access_lines,
    budget,
    cost_of,
    dlq_depth,
    eventually,
    interplay_policy,
    leftovers,
    loop_tasks,
    spend,
    tokens_of,
)
from tests.support.mock_openai import Fault, usage_for
from tests.support.prom import scrape

MSG = [{"role": "user", "content": "hello there friend"}]
IDLE = {"leases": 0, "flights": 0, "cache_tasks": 0, "deployments_in_flight": 0, "retry_budget_active": 0,
        "retries_in_flight": 0, "in_flight": 0}
CACHE_ON = "{enabled: true, ttl_s: 60}"


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    if request.param == "memory":
        return "backend: memory", None
    url = request.getfixturevalue("redis_url")
    return f"backend: redis\n  redis_url: {url}\n  timeout_ms: 1000", url


@pytest.fixture
def build(make_gateway, upstream, backup, tmp_path):
    """A gateway for ``interplay_policy(**kw)`` and a reader of its state."""
    made: list[State] = []

    def make(redis_url: str | None = None, clock: FakeClock | None = None, **kw):
        gw = make_gateway(interplay_policy(upstream.url, backup.url, tmp_path, **kw), clock=clock or FakeClock())
        made.append(State(gw, redis_url))
        return gw, made[-1]

    yield make
    for st in made:
        st.close()


def ask(gw, model: str = "small", **kw):
    """One chat call; temperature 0 unless given, so the cache may keep its answer."""
    kw.setdefault("temperature", 0)
    return gw.client("sk-acme").chat.completions.with_raw_response.create(model=model, messages=kw.pop("messages", MSG),
                                                                         **kw)


# -- budget downgrade after the token reservation ---------------------------------------------------
def test_downgrade_charges_tokens_spend_and_labels_to_the_model_that_served(build, upstream, tmp_path, backend):
    state, url = backend
    gw, st = build(url, state=state, budget="{usd: 1, soft: 0.001, on_soft: downgrade}")
    first = ask(gw, "large", max_tokens=5)
    assert first.headers["x-gateway-model"] == "large" and "x-gateway-downgraded" not in first.headers
    large = tokens_of(upstream.requests[0])
    assert st.tpm_used("m:large") == large and st.tpm_used("m:small") == 0

    second = ask(gw, "large", max_tokens=5)  # past the soft threshold: served by small
    assert second.headers["x-gateway-downgraded"] == "true" and second.headers["x-gateway-model"] == "small"
    assert upstream.requests[1]["model"] == "small-u"
    small = tokens_of(upstream.requests[1])
    assert st.tpm_used("m:small") == small  # the served model's tpm carries the tokens...
    assert st.tpm_used("m:large") == large  # ...not the requested one
    assert st.tpm_used("t") == large + small

    s = spend(gw)
    assert s["models"]["small"]["requests"] == 1 and s["models"]["large"]["requests"] == 1
    assert s["models"]["small"]["spent_usd"] == pytest.approx(cost_of(upstream.requests[1], "small"), abs=1e-12)
    assert budget(gw)["reserved_usd"] == 0
    rid = second.headers["x-request-id"]
    assert eventually(lambda: access_lines(gw, tmp_path, rid))
    [line] = access_lines(gw, tmp_path, rid)
    assert (line["model"], line["served_model"], line["deployment"]) == ("large", "small", "upstream/small-u")
    assert line["budget"] == "downgraded"
    m = scrape(gw.url)
    usage = usage_for(upstream.requests[1], "Echo: hello there friend")
    assert m.value("llm_gateway_tokens_total", tenant="acme", model="small", type="prompt") == usage["prompt_tokens"]
    assert m.value("llm_gateway_cost_usd_total", tenant="acme", model="small") == pytest.approx(
        cost_of(upstream.requests[1], "small"), abs=1e-12)
    assert m.value("llm_gateway_budget_downgrades_total", tenant="acme") == 1


def test_routed_request_is_charged_to_the_virtual_and_the_served_model(build, upstream):
    gw, st = build(rate_limit="{tpm: 100000, models: {auto: {tpm: 50000}, small: {tpm: 50000}, large: {tpm: 50000}}}")
    raw = ask(gw, "auto")
    assert raw.headers["x-gateway-model"] == "small"
    n = tokens_of(upstream.requests[0])
    assert (st.tpm_used("m:auto"), st.tpm_used("m:small"), st.tpm_used("m:large")) == (n, n, 0)


# -- cache hits --------------------------------------------------------------------------------------
def test_cache_hit_reserves_no_tokens_charges_nothing_frees_its_slot_and_counts_for_rpm(build, upstream, backend):
    state, url = backend
    gw, st = build(url, state=state, cache=CACHE_ON, rate_limit="{rpm: 4, tpm: 100000, concurrency: 1}")
    assert ask(gw).headers["x-cache"] == "MISS"
    n, cost = tokens_of(upstream.requests[0]), cost_of(upstream.requests[0], "small")
    assert ask(gw).headers["x-cache"] == "HIT"  # one slot: each hit gave it back
    chunks = list(gw.client("sk-acme").chat.completions.create(model="small", messages=MSG, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hello there friend"
    assert upstream.calls == 1
    assert st.tpm_used("t") == n  # the miss only
    assert st.requests_logged() == 3 and st.slots_held() == 0
    s = spend(gw)
    assert s["requests"] == 1 and s["spent_usd"] == pytest.approx(cost, abs=1e-12)
    assert budget(gw)["reserved_usd"] == 0
    ask(gw)  # the 4th request of the minute
    with pytest.raises(openai.RateLimitError):
        ask(gw)  # hits are requests: the 5th is over rpm
    assert upstream.calls == 1


# -- single-flight followers --------------------------------------------------------------------------
async def test_single_flight_followers_are_free_hits_and_the_leader_pays_once(build, upstream, backend):
    state, url = backend
    gw, st = build(url, state=state, cache=CACHE_ON)
    upstream.default = Fault(delay_s=0.4)
    client = gw.aclient("sk-acme", timeout=30.0)

    async def one():
        return await client.chat.completions.with_raw_response.create(model="small", messages=MSG, temperature=0)

    results = await asyncio.gather(*(one() for _ in range(6)))
    await client.close()
    assert upstream.calls == 1
    assert sorted(r.headers["x-cache"] for r in results) == ["HIT"] * 5 + ["MISS"]
    assert st.tpm_used("t") == tokens_of(upstream.requests[0]) and st.requests_logged() == 6
    s = spend(gw)
    assert s["requests"] == 1 and s["spent_usd"] == pytest.approx(cost_of(upstream.requests[0], "small"), abs=1e-12)
    assert budget(gw)["reserved_usd"] == 0 and st.slots_held() == 0


async def test_stream_leader_that_leaves_pays_for_the_whole_shared_answer(build, upstream):
    gw, st = build(cache=CACHE_ON)
    upstream.default = Fault(chunk_delay_s=0.1)
    client = gw.aclient("sk-acme", timeout=30.0)
    leader = await client.chat.completions.create(model="small", messages=MSG, temperature=0, stream=True)
    async for _chunk in leader:
        break
    follower = asyncio.create_task(_stream_text(client))
    await asyncio.sleep(0.15)  # the follower joined the flight
    await leader.close()  # the leader's client leaves; the follower keeps the upstream stream alive
    assert await follower == "Echo: hello there friend"
    await client.close()
    assert upstream.calls == 1 and upstream.cancelled == 0
    assert eventually(lambda: spend(gw)["requests"] == 1)
    s = spend(gw)
    assert s["estimated_requests"] == 0  # the real usage of the shared answer, not a guess at a part of it
    assert s["spent_usd"] == pytest.approx(cost_of(upstream.requests[0], "small"), abs=1e-12)
    assert st.tpm_used("t") == tokens_of(upstream.requests[0])
    assert eventually(lambda: leftovers(gw) == IDLE) and st.slots_held() == 0


async def _stream_text(client: openai.AsyncOpenAI) -> str:
    stream = await client.chat.completions.create(model="small", messages=MSG, temperature=0, stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


# -- failover ----------------------------------------------------------------------------------------
def test_failover_with_retries_charges_once_and_completes_once(build, upstream, backup, tmp_path):
    gw, st = build()
    upstream.push(Fault(503), Fault(500))  # both attempts on upstream fail: backup serves
    raw = ask(gw)
    assert raw.headers["x-gateway-provider"] == "backup" and upstream.calls == 2 and backup.calls == 1
    assert st.tpm_used("t") == tokens_of(backup.requests[0])
    s = spend(gw)
    assert s["requests"] == 1 and s["spent_usd"] == pytest.approx(cost_of(backup.requests[0], "small"), abs=1e-12)
    rid = raw.headers["x-request-id"]
    assert eventually(lambda: access_lines(gw, tmp_path, rid))
    [line] = access_lines(gw, tmp_path, rid)  # complete ran once: one access-log line
    assert [a["status"] for a in line["attempts"]] == [503, 500, 200] and line["retries"] == 1
    assert scrape(gw.url).value("llm_gateway_requests_total", tenant="acme") == 1
    assert dlq_depth(gw) == 0


def test_exhausted_request_charges_nothing_and_is_dead_lettered_once(build, upstream, backup, tmp_path):
    gw, st = build()
    upstream.default = backup.default = Fault(503)
    with pytest.raises(openai.InternalServerError) as err:
        ask(gw, max_tokens=50)
    assert upstream.calls == 2 and backup.calls == 2
    assert st.tpm_used("t") == 0  # no model produced a token: the reservation is given back
    assert spend(gw)["requests"] == 0 and budget(gw)["reserved_usd"] == 0
    assert dlq_depth(gw) == 1
    rid = err.value.response.headers["x-request-id"]
    assert eventually(lambda: access_lines(gw, tmp_path, rid))
    assert len(access_lines(gw, tmp_path, rid)) == 1
    assert st.slots_held() == 0 and leftovers(gw) == IDLE


# -- client disconnect mid-stream ----------------------------------------------------------------------
@pytest.mark.parametrize("cache", [CACHE_ON, "{enabled: false}"])
def test_client_leaving_mid_stream_releases_everything(build, upstream, cache):
    gw, st = build(cache=cache, rate_limit="{tpm: 100000, concurrency: 1}")
    baseline = loop_tasks(gw)
    upstream.default = Fault(chunk_delay_s=0.2)
    client = gw.client("sk-acme")
    stream = client.chat.completions.create(model="small", messages=MSG, stream=True, max_tokens=40)
    seen = [next(iter(stream)) for _ in range(2)]
    stream.close()
    client.close()
    assert "".join(c.choices[0].delta.content for c in seen) == "Echo: hello"
    assert eventually(lambda: upstream.cancelled == 1)  # the upstream stream was cut, not read to its end
    assert eventually(lambda: spend(gw)["requests"] == 1)
    s = spend(gw)
    assert s["estimated_requests"] == 1  # settled with the estimate of what was generated
    est = prompt_tokens("chat", {"messages": MSG})
    assert s["spent_usd"] == pytest.approx((est * 1.0 + math.ceil(len("Echo: hello") / 4) * 2.0) / 1e6, abs=1e-12)
    assert budget(gw)["reserved_usd"] == 0
    assert st.tpm_used("t") == est + 40  # the token reservation is kept: the upper bound of what it cost
    assert st.slots_held() == 0
    assert eventually(lambda: leftovers(gw) == IDLE)
    assert eventually(lambda: loop_tasks(gw) <= baseline)
    upstream.default = Fault()
    assert ask(gw, messages=[{"role": "user", "content": "next"}]).parse().choices[0].message.content == "Echo: next"


# -- exhaustion answered from the cache or a static text -------------------------------------------
def test_stale_answer_on_exhaustion_is_free_not_refreshed_and_dead_lettered(build, upstream, backup):
    clock = FakeClock()
    gw, st = build(clock=clock, cache="{enabled: true, ttl_s: 10}", on_exhausted="stale")
    assert ask(gw).headers["x-cache"] == "MISS"
    cost = cost_of(upstream.requests[0], "small")
    clock.advance(15)  # past the TTL; the miss's tokens are still in the one-minute window
    used = st.tpm_used("t")
    upstream.default = backup.default = Fault(503)
    raw = ask(gw)
    assert raw.headers["x-cache"] == "STALE" and raw.headers["x-gateway-exhausted"] == "stale"
    assert st.tpm_used("t") == used  # the stale answer cost no tokens
    assert spend(gw)["requests"] == 1 and spend(gw)["spent_usd"] == pytest.approx(cost, abs=1e-12)
    assert budget(gw)["reserved_usd"] == 0
    assert dlq_depth(gw) == 1
    upstream.default = backup.default = Fault()
    calls = upstream.calls
    assert ask(gw).headers["x-cache"] == "MISS"  # the stale answer was not stored as a fresh one
    assert upstream.calls == calls + 1


def test_static_answer_on_exhaustion_is_free_not_cached_and_dead_lettered(build, upstream, backup):
    gw, st = build(cache=CACHE_ON, on_exhausted="static")
    upstream.default = backup.default = Fault(503)
    raw = ask(gw, max_tokens=30)
    assert raw.parse().choices[0].message.content == "resting" and raw.headers["x-gateway-exhausted"] == "static"
    assert st.tpm_used("t") == 0
    assert spend(gw)["requests"] == 0 and budget(gw)["reserved_usd"] == 0
    assert dlq_depth(gw) == 1
    upstream.default = backup.default = Fault()
    again = ask(gw, max_tokens=30)
    assert again.headers["x-cache"] == "MISS" and again.parse().choices[0].message.content != "resting"
    assert dlq_depth(gw) == 1


# -- reload while requests are in flight ----------------------------------------------------------------
async def test_request_admitted_before_a_reload_settles_under_its_own_policy(build, upstream, backup, tmp_path,
                                                                             backend):
    state, url = backend
    gw, st = build(url, state=state)
    upstream.default = Fault(delay_s=0.6)
    client = gw.aclient("sk-acme", timeout=30.0)
    slow = asyncio.create_task(client.chat.completions.create(model="small", messages=MSG))
    await asyncio.to_thread(eventually, lambda: upstream.calls == 1)
    (tmp_path / "policy.yaml").write_text(interplay_policy(
        upstream.url, backup.url, tmp_path, state=state, small_price="{input: 50.0, output: 70.0}",
        rate_limit="{tpm: 500000, concurrency: 3, models: {large: {tpm: 1000}}}"))
    assert await asyncio.to_thread(gw.reload)
    answer = await slow
    assert answer.choices[0].message.content == "Echo: hello there friend"
    old = cost_of(upstream.requests[0], "small")  # the price it was admitted under
    assert spend(gw)["spent_usd"] == pytest.approx(old, abs=1e-12) and budget(gw)["reserved_usd"] == 0
    assert st.tpm_used("t") == tokens_of(upstream.requests[0]) and st.tpm_used("m:small") == tokens_of(
        upstream.requests[0])
    upstream.default = Fault()
    await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "after"}])
    await client.close()
    new = cost_of(upstream.requests[1], "small", (50.0, 70.0))
    assert spend(gw)["spent_usd"] == pytest.approx(old + new, abs=1e-12)
    assert st.slots_held() == 0 and leftovers(gw) == IDLE


async def test_retry_after_a_reload_removed_its_provider_fails_over(build, upstream, backup, tmp_path):
    gw, st = build()
    upstream.push(Fault(503, delay_s=0.5))
    client = gw.aclient("sk-acme", timeout=30.0)
    slow = asyncio.create_task(client.chat.completions.with_raw_response.create(model="small", messages=MSG))
    await asyncio.to_thread(eventually, lambda: upstream.calls == 1)
    (tmp_path / "policy.yaml").write_text(interplay_policy(upstream.url, backup.url, tmp_path,
                                                           providers=("backup",)))
    assert await asyncio.to_thread(gw.reload)
    raw = await slow
    await client.close()
    assert raw.headers["x-gateway-provider"] == "backup" and upstream.calls == 1 and backup.calls == 1
    assert st.tpm_used("t") == tokens_of(backup.requests[0])
    assert leftovers(gw) == IDLE


async def test_follower_that_leaves_while_waiting_does_not_break_the_flight(build, upstream):
    gw, st = build(cache=CACHE_ON)
    upstream.default = Fault(delay_s=0.8)
    client = gw.aclient("sk-acme", timeout=30.0)
    leader = asyncio.create_task(client.chat.completions.with_raw_response.create(model="small", messages=MSG, temperature=0))
    await asyncio.to_thread(eventually, lambda: upstream.calls == 1)
    impatient = gw.aclient("sk-acme", timeout=0.2)
    with pytest.raises(openai.APITimeoutError):  # joins the flight, then hangs up while waiting
        await impatient.chat.completions.create(model="small", messages=MSG, temperature=0)
    await impatient.close()
    follower = await client.chat.completions.with_raw_response.create(model="small", messages=MSG, temperature=0)
    assert (await leader).headers["x-cache"] == "MISS" and follower.headers["x-cache"] == "HIT"
    assert upstream.calls == 1  # the follower still shared the leader's call...
    again = await client.chat.completions.with_raw_response.create(model="small", messages=MSG, temperature=0)
    await client.close()
    assert again.headers["x-cache"] == "HIT" and upstream.calls == 1  # ...and the answer was stored
    assert st.slots_held() == 0 and leftovers(gw) == IDLE


# -- the audit record keeps the request as the client sent it -------------------------------------------
def test_audit_records_the_stream_request_without_the_gateways_own_usage_option(build, upstream, tmp_path):
    gw, _ = build(audit="{bodies: true}")
    chunks = list(gw.client("sk-acme").chat.completions.create(model="small", messages=MSG, stream=True))
    assert all(c.usage is None for c in chunks)
    assert upstream.requests[0]["stream_options"] == {"include_usage": True}  # the gateway asked for it
    path = tmp_path / "audit.jsonl"
    assert eventually(lambda: path.exists() and path.read_text().strip() != "")
    [record] = [orjson.loads(line) for line in path.read_text().splitlines()]
    assert record["request"]["stream"] is True and "stream_options" not in record["request"]
    assert record["response"]["streamed_text"] == "Echo: hello there friend"
