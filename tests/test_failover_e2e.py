"""Failover through the gateway with the openai SDK and fault-injecting loopback upstreams."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from gateway.clock import FakeClock
from tests.support.failover_policy import failover_policy
from tests.support.mock_openai import Fault

MSG = [{"role": "user", "content": "hello there friend"}]


@pytest.fixture
def make(make_gateway, upstream, backup, tmp_path):
    def build(clock=None, **kw):
        policy = failover_policy(upstream.url, backup.url, dlq_path=str(tmp_path / "dlq.jsonl"), **kw)
        return make_gateway(policy, clock=clock or FakeClock())
    return build


def ask(gw, **kw):
    return gw.client("sk-acme").chat.completions.with_raw_response.create(model=kw.pop("model", "chat"),
                                                                         messages=MSG, **kw)


def stream_text(gw, **kw) -> str:
    chunks = gw.client("sk-acme").chat.completions.create(model="chat", messages=MSG, stream=True, **kw)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_primary_500s_backup_serves_with_zero_client_errors(make, upstream, backup):
    gw = make()
    upstream.default = Fault(500)
    for i in range(10):
        if i % 2:
            assert stream_text(gw) == "Echo: hello there friend"
        else:
            raw = ask(gw)
            assert raw.parse().choices[0].message.content == "Echo: hello there friend"
            assert raw.headers["x-gateway-provider"] == "backup"
    assert upstream.calls == 10 and backup.calls == 10
    assert backup.requests[-1]["model"] == "m-backup"


def test_same_deployment_retried_with_backoff_before_failover(make, upstream, backup):
    gw = make(retry="{attempts: 3, backoff_ms: 1, max_backoff_ms: 5}")
    upstream.push(Fault(503), Fault(500))
    assert ask(gw).headers["x-gateway-provider"] == "primary"
    assert upstream.calls == 3 and backup.calls == 0
    upstream.push(Fault(503), Fault(503), Fault(503))  # attempts used up on primary: on to backup
    assert ask(gw).headers["x-gateway-provider"] == "backup"
    assert upstream.calls == 6 and backup.calls == 1


def test_retry_after_is_honoured_or_the_request_moves_on(make, upstream, backup):
    gw = make(retry="{attempts: 3, backoff_ms: 1, max_backoff_ms: 1000}")
    upstream.push(Fault(503, headers={"retry-after-ms": "50"}))
    assert ask(gw).headers["x-gateway-provider"] == "primary"  # waited as asked, then retried
    assert upstream.calls == 2
    upstream.push(Fault(429, headers={"retry-after": "30"}))  # longer than max_backoff: don't wait, fail over
    assert ask(gw).headers["x-gateway-provider"] == "backup"
    assert upstream.calls == 3 and backup.calls == 1


def test_non_retryable_errors_are_answered_faithfully(make, upstream, backup):
    gw = make(retry="{attempts: 3, backoff_ms: 0, on_status: [500, 502, 503, 504]}")
    upstream.push(Fault(400, body=b'{"error": {"message": "bad temperature", "type": "invalid_request_error",'
                                  b' "param": "temperature", "code": "bad"}}'))
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw)
    assert info.value.message == "Error code: 400 - bad temperature" or "bad temperature" in info.value.message
    assert info.value.code == "bad"
    upstream.push(Fault(429, headers={"retry-after": "7"}))  # 429 not in on_status here: passed through
    with pytest.raises(openai.RateLimitError) as info:
        ask(gw)
    assert info.value.response.headers["retry-after"] == "7"
    assert backup.calls == 0 and upstream.calls == 2


def test_black_hole_hits_first_byte_timeout_then_backup(make, upstream, backup):
    gw = make(first_byte_s=0.3)
    upstream.push(Fault(black_hole=True), Fault(black_hole=True))
    assert ask(gw).headers["x-gateway-provider"] == "backup"
    assert stream_text(gw) == "Echo: hello there friend"
    assert upstream.calls == 2 and backup.calls == 2


def test_connection_reset_fails_over(make, upstream, backup):
    gw = make()
    upstream.push(Fault(reset=True))
    assert ask(gw).headers["x-gateway-provider"] == "backup"


def test_breaker_opens_after_n_failures_and_primary_gets_no_calls_until_cooldown(make, upstream, backup):
    clock = FakeClock()
    gw = make(breaker="{failures: 3, cooldown_s: 30}", clock=clock)
    breakers = gw.services.breakers
    upstream.default = Fault(500)
    for _ in range(10):
        assert ask(gw).headers["x-gateway-provider"] == "backup"
    assert upstream.calls == 3  # opened after 3 consecutive failures: the next 7 never reached it
    assert breakers.states()["primary/m-primary"] == "open"
    assert breakers.states()["backup/m-backup"] == "closed"
    clock.advance(29)
    ask(gw)
    assert upstream.calls == 3
    clock.advance(2)
    assert breakers.states()["primary/m-primary"] == "half_open"
    ask(gw)  # the single probe fails: open again
    assert upstream.calls == 4 and breakers.states()["primary/m-primary"] == "open"
    ask(gw)
    assert upstream.calls == 4
    upstream.default = Fault()  # primary recovers
    clock.advance(31)
    assert ask(gw).headers["x-gateway-provider"] == "primary"  # the probe succeeds and closes it
    assert breakers.states()["primary/m-primary"] == "closed"
    assert ask(gw).headers["x-gateway-provider"] == "primary"
    assert upstream.calls == 6 and backup.calls == 13


def test_open_breaker_on_the_only_deployment_fails_fast_without_a_call(make, upstream):
    gw = make(breaker="{failures: 2, cooldown_s: 60}")
    upstream.default = Fault(502)
    for _ in range(5):
        with pytest.raises(openai.InternalServerError) as info:
            ask(gw, model="solo")
        assert info.value.status_code == 503
    assert upstream.calls == 2
    assert int(info.value.response.headers["retry-after"]) > 1  # the breaker's remaining cooldown


def test_stream_cut_before_first_byte_fails_over_transparently(make, upstream, backup):
    gw = make()
    upstream.push(Fault(cut_after=0))
    assert stream_text(gw) == "Echo: hello there friend"
    upstream.push(Fault(cut_after=0, no_done=True))
    assert stream_text(gw, stream_options={"include_usage": True}) == "Echo: hello there friend"
    assert upstream.calls == 2 and backup.calls == 2


def test_stream_cut_after_first_byte_is_an_error_event_not_a_truncated_200(make, upstream, backup):
    gw = make()
    upstream.push(Fault(cut_after=1))
    seen: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in gw.client("sk-acme").chat.completions.create(model="chat", messages=MSG, stream=True):
            seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(seen) == "Echo:"
    assert "upstream stream failed" in info.value.message
    assert backup.calls == 0  # too late to fail over: the client had the first byte


def test_weighted_strategy_spreads_load_and_keeps_failover(make, upstream, backup):
    gw = make(strategy="weighted")
    for _ in range(40):
        ask(gw)
    assert upstream.calls > 5 and backup.calls > 5 and upstream.calls + backup.calls == 40
    upstream.default = Fault(500)
    for _ in range(10):
        assert ask(gw).headers["x-gateway-provider"] == "backup"


def test_request_deadline_bounds_all_attempts(make, upstream, backup):
    gw = make(first_byte_s=0.4, retry="{attempts: 3, backoff_ms: 0, deadline_s: 0.5}")
    upstream.default = Fault(black_hole=True)
    with pytest.raises(openai.InternalServerError) as info:
        ask(gw)
    assert info.value.status_code == 503
    # 0.4s timeout, then a retry cut to what is left of 0.5s; then nothing is left for the backup
    assert upstream.calls == 2 and backup.calls == 0


def test_client_leaving_mid_failover_releases_everything(make, upstream, backup):
    gw = make(first_byte_s=5, breaker="{failures: 1, cooldown_s: 30}")
    upstream.push(Fault(black_hole=True))
    with pytest.raises(openai.APITimeoutError):
        gw.client("sk-acme", timeout=0.3).chat.completions.create(model="chat", messages=MSG)
    deadline = time.monotonic() + 5
    stats = gw.services.balancer.stats
    while stats["primary/m-primary"].in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats["primary/m-primary"].in_flight == 0
    assert gw.services.retry_budget.active == 0
    # the abandoned attempt is no verdict on primary: the breaker stays closed and primary serves
    assert gw.services.breakers.states()["primary/m-primary"] == "closed"
    assert ask(gw).headers["x-gateway-provider"] == "primary"
    assert backup.calls == 0


async def test_client_leaving_mid_stream_cancels_the_upstream_and_frees_the_deployment(make, upstream):
    gw = make()
    upstream.push(Fault(chunk_delay_s=0.3))
    client = gw.aclient("sk-acme")
    stream = await client.chat.completions.create(model="chat", messages=MSG, stream=True)
    async for chunk in stream:
        assert chunk.choices[0].delta.content == "Echo:"
        break
    await stream.close()
    await client.close()
    stats = gw.services.balancer.stats["primary/m-primary"]
    deadline = time.monotonic() + 5
    while (stats.in_flight or not upstream.cancelled) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert stats.in_flight == 0 and upstream.cancelled == 1
    assert gw.services.breakers.states()["primary/m-primary"] == "closed"


async def test_retry_budget_keeps_an_outage_from_becoming_a_retry_storm(make, upstream):
    gw = make(retry="{attempts: 5, backoff_ms: 0, budget_ratio: 0.2, min_retries: 2}")
    upstream.default = Fault(503, delay_s=0.2)  # everyone is in flight when the first failures come back
    client = gw.aclient("sk-acme")

    async def one() -> int:
        try:
            await client.chat.completions.create(model="solo", messages=MSG)
        except openai.InternalServerError as err:
            return err.status_code
        return 200

    statuses = await asyncio.gather(*(one() for _ in range(40)))
    await client.close()
    budget = gw.services.retry_budget
    assert statuses == [503] * 40
    # without a budget: 40 x 5 = 200 calls; with it, retries in flight stay within 20% of active requests
    assert 40 < upstream.calls <= 40 + 40 * 4 * 0.2 and budget.denied > 0
    assert budget.active == 0 and budget.retrying == 0


def test_a_429_storm_is_a_429_with_the_upstream_retry_after_and_opens_no_breaker(make, upstream, backup):
    """Issue 14: rate-limit answers are not failures; every deployment at 429 is a 429, not a 503."""
    gw = make(breaker="{failures: 3, cooldown_s: 10}", retry="{attempts: 1, backoff_ms: 0}")
    upstream.default = backup.default = Fault(429, headers={"retry-after": "3"})
    for _ in range(20):
        with pytest.raises(openai.RateLimitError) as exc:
            ask(gw)
        assert exc.value.response.headers["retry-after"] == "3"
    assert set(gw.services.breakers.states().values()) == {"closed"}
    assert upstream.calls == 20 and backup.calls == 20


def test_a_stream_cut_by_total_s_says_so(make_gateway, upstream):
    """Issue 14: a stream stopped by the whole-answer deadline is not reported as a stall."""
    gw = make_gateway(f"""
version: 1
providers:
  primary:
    type: openai
    base_url: {upstream.url}
    timeouts: {{first_byte_s: 5, total_s: 0.6}}
models:
  chat:
    deployments: [{{provider: primary, model: m}}]
retry: {{attempts: 1, backoff_ms: 0}}
tenants:
  acme: {{api_keys: [sk-acme], models: [chat]}}
""")
    upstream.default = Fault(chunk_delay_s=0.25)  # chunks keep flowing, each well inside first_byte_s
    with pytest.raises(openai.APIError) as exc:
        stream = gw.client("sk-acme").chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "a long enough answer to need many chunks"}],
            stream=True)
        for _ in stream:
            pass
    assert "exceeded timeouts.total_s" in str(exc.value)
