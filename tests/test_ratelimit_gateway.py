"""Rate limiting through the public interface: the openai SDK -> one gateway -> a loopback upstream."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from gateway.clock import FakeClock
from gateway.ratelimit.fused import AdmitOp
from gateway.ratelimit.window import LEASE_US
from gateway.stages import ratelimit as ratelimit_stage
from gateway.stages.ratelimit import RateLimitStage
from tests.support.harness import eventually
from tests.support.mock_openai import Fault
from tests.support.ratelimit import BATCH_KEY, KEY, MSG, ShiftedClock, limited_policy


def _stats(gw):
    return gw.services.ratelimit_stats


def _chat(gw, key: str = KEY, **kw):
    return gw.client(key).chat.completions.with_raw_response.create(model=kw.pop("model", "small"),
                                                                   messages=kw.pop("messages", MSG), **kw)


def test_rpm_limit_answers_openai_429_with_exact_retry_after(make_gateway, upstream):
    clock = FakeClock()
    gw = make_gateway(limited_policy(upstream.url, "{rpm: 3}"), clock=clock)
    remaining = []
    for _ in range(3):
        remaining.append(_chat(gw).headers["x-ratelimit-remaining-requests"])
        clock.advance(5)
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as exc:
        gw.client(KEY).chat.completions.create(model="small", messages=MSG)
    err = exc.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded" and err.type == "rate_limit_error"
    # the oldest request (t=0) leaves the window at t=60; now is t=15
    assert err.response.headers["retry-after-ms"] == "45000" and err.response.headers["retry-after"] == "45"
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.response.headers["x-ratelimit-reset-requests"] == "55s"
    assert upstream.calls == 3 and _stats(gw).outcomes["over_limit"] == 1
    clock.advance(45)
    assert _chat(gw).headers["x-ratelimit-remaining-requests"] == "0"  # t=0 left, t=60 entered


def test_headers_on_every_response_streams_and_errors_included(make_gateway, upstream):
    gw = make_gateway(limited_policy(upstream.url, "{rpm: 10, tpm: 5000}"))
    raw = _chat(gw)
    assert raw.headers["x-ratelimit-limit-requests"] == "10" and raw.headers["x-ratelimit-remaining-requests"] == "9"
    assert raw.headers["x-ratelimit-limit-tokens"] == "5000"
    assert raw.headers["x-ratelimit-reset-requests"] == "1m0s"
    with httpx.stream("POST", gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "small", "messages": MSG, "stream": True}) as resp:
        body = resp.read()
        assert resp.headers["x-ratelimit-remaining-requests"] == "8" and b"[DONE]" in body
    upstream.push(Fault(status=400))
    resp = httpx.post(gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "small", "messages": MSG})
    assert resp.status_code == 400 and resp.headers["x-ratelimit-remaining-requests"] == "7"
    # the provider's own limits never leak through as ours
    upstream.push(Fault(headers={"x-ratelimit-limit-requests": "999"}))
    assert _chat(gw).headers["x-ratelimit-limit-requests"] == "10"


def test_sdk_retry_succeeds_once_capacity_returns(make_gateway, upstream):
    clock = ShiftedClock()
    gw = make_gateway(limited_policy(upstream.url, "{rpm: 2}"), clock=clock)
    for _ in range(2):
        _chat(gw)
    clock.offset = 59.2  # the window frees in ~0.8 s of real time
    client = gw.client(KEY, max_retries=2)
    out = client.chat.completions.with_raw_response.create(model="small", messages=MSG)
    assert out.parse().choices[0].message.content == "Echo: hello there"
    assert upstream.calls == 3 and _stats(gw).outcomes["over_limit"] >= 1


def test_shadow_mode_counts_but_rejects_nothing(make_gateway, upstream):
    gw = make_gateway(limited_policy(upstream.url, "{rpm: 2, mode: shadow}"))
    remaining = [_chat(gw).headers["x-ratelimit-remaining-requests"] for _ in range(4)]
    assert remaining == ["1", "0", "0", "0"] and upstream.calls == 4
    assert _stats(gw).outcomes["shadow_over_limit"] == 2 and _stats(gw).outcomes["over_limit"] == 0


def test_per_key_and_per_model_limits(make_gateway, upstream):
    policy = limited_policy(upstream.url, "{rpm: 100, models: {large: {rpm: 1}}}", batch_limit="{rpm: 2}")
    gw = make_gateway(policy)
    _chat(gw, BATCH_KEY)
    _chat(gw, BATCH_KEY)
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(gw, BATCH_KEY)
    assert "API key 'batch'" in exc.value.message
    _chat(gw, KEY)  # the tenant's other key is not limited by batch's rpm
    _chat(gw, KEY, model="large")
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(gw, KEY, model="large")
    assert "model 'large'" in exc.value.message
    assert _chat(gw, KEY).headers["x-ratelimit-remaining-requests"] == "95"


def test_concurrency_slots_free_on_success_error_and_disconnect(make_gateway, upstream):
    gw = make_gateway(limited_policy(upstream.url, "{concurrency: 1}"))
    upstream.push(Fault(delay_s=1.0))
    slow = threading.Thread(target=lambda: _chat(gw))
    slow.start()
    # the slow request holds the one slot once it reaches the upstream (a busy CI host may start the thread late)
    assert eventually(lambda: upstream.in_flight == 1)
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(gw)
    assert exc.value.response.headers["retry-after"] == "1"
    slow.join()
    _chat(gw)  # freed on success
    upstream.default = Fault(status=500)
    with pytest.raises(openai.APIStatusError):
        _chat(gw)
    upstream.default = Fault()
    _chat(gw)  # freed on error
    upstream.push(Fault(delay_s=2))
    with pytest.raises(openai.APITimeoutError):
        gw.client(KEY, timeout=0.3).chat.completions.create(model="small", messages=MSG)
    deadline = time.monotonic() + 5
    while upstream.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    _chat(gw)  # freed on client disconnect


@pytest.mark.parametrize("cache", [False, True])  # the slot taken in admit's call, or in limit_requests' own
def test_a_long_request_holds_its_concurrency_slot_for_its_whole_life(make_gateway, upstream, cache):
    """On the memory backend a slot has no lease to run out: however long its request runs (here far
    past the lease, with no renewal in between), it is held until the request completes."""
    clock = FakeClock()
    policy = limited_policy(upstream.url, "{concurrency: 1}")
    if cache:
        policy = policy.replace("rate_limit: {concurrency: 1}\n", "rate_limit: {concurrency: 1}\n    cache: {enabled: true}\n")
    gw = make_gateway(policy, clock=clock)
    upstream.push(Fault(delay_s=0.8))
    slow = threading.Thread(target=lambda: _chat(gw))
    slow.start()
    assert eventually(lambda: upstream.in_flight == 1, 5)
    clock.advance(10 * LEASE_US / 1e6)
    with pytest.raises(openai.RateLimitError):
        _chat(gw, messages=[{"role": "user", "content": "another"}])
    slow.join()
    _chat(gw, messages=[{"role": "user", "content": "another"}])  # freed on completion
    assert len(gw.stage(RateLimitStage).leases) == 0


def test_a_failing_memory_call_falls_back_to_local_limits(make_gateway, upstream, monkeypatch):
    """The memory backend fails only on a bug; its limiter call then decides as ``on_backend_error``
    says, like Redis's: here ``local`` (the default), whose slots are leased and renewed."""
    def broken(*_):
        raise RuntimeError("a bug")

    policy = limited_policy(upstream.url, "{concurrency: 1}").replace(
        "rate_limit: {concurrency: 1}\n", "rate_limit: {concurrency: 1}\n    cache: {enabled: true}\n")
    gw = make_gateway(policy)
    monkeypatch.setattr(AdmitOp, "native", broken)
    monkeypatch.setattr(ratelimit_stage, "acquire_unleased", broken)  # the stage's own call (``run_native``)
    leases = gw.stage(RateLimitStage).leases
    upstream.push(Fault(delay_s=0.6))
    slow = threading.Thread(target=lambda: _chat(gw))
    slow.start()
    assert eventually(lambda: upstream.in_flight == 1, 5)
    assert len(leases) == 1  # the local stand-in's slot
    with pytest.raises(openai.RateLimitError):
        _chat(gw, messages=[{"role": "user", "content": "another"}])
    slow.join()
    _chat(gw, messages=[{"role": "user", "content": "another"}])
    assert eventually(lambda: len(leases) == 0 and _stats(gw).outcomes.get("failure_mode_allowed") == 2, 5)
    assert _stats(gw).failure_decisions["local"] == 3 and _stats(gw).backend_errors == 3


def test_tokens_are_reserved_then_reconciled_with_real_usage(make_gateway, upstream):
    gw = make_gateway(limited_policy(upstream.url, "{tpm: 100}"))
    first = _chat(gw, max_tokens=80)
    # reserved: prompt estimate (3 + 4 + 3 = 10) + 80; after completion: real usage 2 + 3 = 5
    assert first.headers["x-ratelimit-remaining-tokens"] == "10"
    nxt = _chat(gw, max_tokens=80)
    assert nxt.headers["x-ratelimit-remaining-tokens"] == "5"  # 100 - 5 (settled) - 90 (this one)
    stream = gw.client(KEY).chat.completions.create(model="small", messages=MSG, max_tokens=50, stream=True)
    assert len(list(stream)) > 1
    third = _chat(gw, max_tokens=60)
    assert third.headers["x-ratelimit-remaining-tokens"] == "15"  # 100 - 5 - 5 - 5 (stream) - 70


def test_request_larger_than_tpm_is_refused_without_retry(make_gateway, upstream):
    gw = make_gateway(limited_policy(upstream.url, "{tpm: 100}"))
    client = gw.client(KEY, max_retries=3)
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="small", messages=MSG, max_tokens=500)
    assert "Request too large" in exc.value.message and upstream.calls == 0
    assert exc.value.response.headers["x-should-retry"] == "false"


def test_without_max_tokens_the_policy_default_is_reserved(make_gateway, upstream):
    gw = make_gateway(limited_policy(upstream.url, "{tpm: 2000}"))
    upstream.push(Fault(delay_s=0.5))
    holder = threading.Thread(target=lambda: _chat(gw))
    holder.start()
    time.sleep(0.25)
    # in flight: 10 (prompt estimate) + 1024 (input.default_max_tokens) reserved
    assert _chat(gw, max_tokens=1).headers["x-ratelimit-remaining-tokens"] == str(2000 - 1034 - 11)
    holder.join()


def test_queue_serves_waiters_in_arrival_order(make_gateway, upstream):
    gw = make_gateway(limited_policy(upstream.url, "{concurrency: 1}", queue="{max_wait_ms: 5000}"))
    upstream.default = Fault(delay_s=0.2)
    threads = []
    for i in range(4):
        t = threading.Thread(target=_chat, args=(gw,), kwargs={"messages": [{"role": "user", "content": f"m{i}"}]})
        t.start()
        threads.append(t)
        # the next one starts once this one holds the slot or waits in the queue: arrival order is fixed
        assert eventually(lambda i=i: upstream.calls >= 1 if i == 0 else _stats(gw).queued == i, 10)
    for t in threads:
        t.join()
    assert [r["messages"][0]["content"] for r in upstream.requests] == ["m0", "m1", "m2", "m3"]
    assert upstream.max_in_flight == 1 and _stats(gw).queued == 3 and _stats(gw).queue_timeouts == 0


def test_queue_gives_up_after_max_wait(make_gateway, upstream):
    gw = make_gateway(limited_policy(upstream.url, "{concurrency: 1}", queue="{max_wait_ms: 200}"))
    upstream.push(Fault(delay_s=1.5))
    slow = threading.Thread(target=lambda: _chat(gw))
    slow.start()
    assert eventually(lambda: upstream.in_flight == 1)
    with pytest.raises(openai.RateLimitError):
        _chat(gw)
    slow.join()
    assert _stats(gw).queue_timeouts == 1


def test_queue_waits_for_the_request_window(make_gateway, upstream):
    clock = FakeClock()
    gw = make_gateway(limited_policy(upstream.url, "{rpm: 1}", queue="{max_wait_ms: 10000}"), clock=clock)
    _chat(gw)
    done: list[int] = []
    waiter = threading.Thread(target=lambda: done.append(_chat(gw).status_code))
    waiter.start()
    time.sleep(0.4)
    assert not done  # queued, not refused
    clock.advance(60)
    waiter.join(5)
    assert done == [200] and _stats(gw).queued == 1
