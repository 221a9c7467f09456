"""Budgets end to end: the openai SDK -> the gateway -> a real mock upstream; spend read back from
the admin API and checked against costs computed from the mock's own usage figures."""

from __future__ import annotations

import math

import openai
import pytest

from gateway.clock import FakeClock
from gateway.tokens import prompt_tokens
from tests.support.budget import (
    ADMIN_KEY,
    PRICES,
    admin_get,
    budget,
    budget_policy,
    eventually,
    served_cost,
    spend,
)
from tests.support.mock_anthropic import MockAnthropic, Reply
from tests.support.mock_openai import Fault

WORDS = "please summarise the quarterly report for the board in plain words"
MSG = [{"role": "user", "content": WORDS}]


def small_cost(upstream, index: int = -1) -> float:
    return served_cost(upstream.requests[index], "small")


def test_non_stream_spend_is_exact_per_tenant_model_and_key(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 10, period: monthly}"))
    raw = gw.client("sk-acme").chat.completions.with_raw_response.create(model="small", messages=MSG, max_tokens=5)
    assert raw.parse().choices[0].message.content == "Echo: please summarise the quarterly"
    assert "x-gateway-budget-remaining" not in raw.headers  # far from any threshold
    gw.client("sk-acme-ops").chat.completions.create(model="large", messages=MSG)
    expected_small, expected_large = small_cost(upstream, 0), served_cost(upstream.requests[1], "large")
    s = spend(gw.url)
    assert s["period"] == "monthly" and s["requests"] == 2 and s["estimated_requests"] == 0
    assert s["models"]["small"]["spent_usd"] == pytest.approx(expected_small, abs=1e-12)
    assert s["models"]["large"]["spent_usd"] == pytest.approx(expected_large, abs=1e-12)
    assert s["models"]["small"]["prompt_tokens"] == 11 and s["models"]["small"]["completion_tokens"] == 5
    assert s["keys"]["ops"]["spent_usd"] == pytest.approx(expected_large, abs=1e-12)
    assert s["keys"]["acme#0"]["requests"] == 1
    b = budget(gw.url)["budget"]
    assert b["spent_usd"] == pytest.approx(expected_small + expected_large, abs=1e-12)
    assert b["reserved_usd"] == 0 and b["state"] == "ok" and b["usd"] == 10
    snap = gw.thread.call(gw.services.budget.snapshot())  # what the metrics gauges read
    assert snap["acme"]["spent"] == pytest.approx(expected_small + expected_large, abs=1e-12)
    assert snap["acme"]["limit"] == 10 and snap["acme"]["remaining_ratio"] == pytest.approx(1 - snap["acme"]["spent"] / 10)


def test_stream_without_client_usage_is_charged_from_the_stripped_usage_chunk(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 10}"))
    chunks = list(gw.client("sk-acme").chat.completions.create(model="small", messages=MSG, stream=True))
    assert all(c.usage is None for c in chunks)  # the usage chunk the gateway asked for is not passed on
    assert upstream.requests[-1]["stream_options"] == {"include_usage": True}
    s = spend(gw.url)
    assert s["spent_usd"] == pytest.approx(small_cost(upstream), abs=1e-12) and s["estimated_requests"] == 0


def test_stream_with_client_usage_passes_it_and_charges_it(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 10}"))
    chunks = list(gw.client("sk-acme").chat.completions.create(
        model="small", messages=MSG, stream=True, max_tokens=3, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens == 11 and chunks[-1].usage.completion_tokens == 3
    s = spend(gw.url)
    assert s["spent_usd"] == pytest.approx((11 * 100 + 3 * 200) / 1e6, abs=1e-12)


def test_mid_stream_cut_is_charged_an_estimate_of_what_was_generated(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 10}"))
    upstream.push(Fault(cut_after=3))
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in gw.client("sk-acme").chat.completions.create(model="small", messages=MSG, stream=True):
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert received == "Echo: please summarise"
    prompt_est = prompt_tokens("chat", {"messages": MSG})
    expected = (prompt_est * 100 + math.ceil(len(received) / 4) * 200) / 1e6
    s = spend(gw.url)
    assert s["estimated_requests"] == 1 and s["spent_usd"] == pytest.approx(expected, abs=1e-12)
    assert budget(gw.url)["budget"]["reserved_usd"] == 0


def test_client_disconnect_is_charged_for_what_was_generated(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 10}"))
    upstream.push(Fault(chunk_delay_s=0.15))
    stream = gw.client("sk-acme").chat.completions.create(model="small", messages=MSG, stream=True)
    seen = [next(iter(stream)) for _ in range(2)]
    stream.close()
    assert "".join(c.choices[0].delta.content for c in seen) == "Echo: please"
    assert eventually(lambda: spend(gw.url)["requests"] == 1)
    s = spend(gw.url)
    prompt_est = prompt_tokens("chat", {"messages": MSG})
    full = (prompt_est * 100 + math.ceil(len("Echo: " + WORDS) / 4) * 200) / 1e6
    assert s["estimated_requests"] == 1
    assert (prompt_est * 100 + 2 * 200) / 1e6 <= s["spent_usd"] < full  # what was generated, not all of it
    assert eventually(lambda: upstream.cancelled == 1)
    assert budget(gw.url)["budget"]["reserved_usd"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_usage_with_cached_tokens(make_gateway, servers, upstream, stream):
    claude = servers.call(MockAnthropic().start())
    try:
        provider = f"""\
            claude:
              type: anthropic
              base_url: {claude.url}
              api_key: {claude.api_key}
            """
        model = """\
            sonnet:
              price: {table: claude-sonnet-4-5}
              deployments: [{provider: claude, model: claude-sonnet-4-5}]
            """
        gw = make_gateway(budget_policy(upstream.url, budget="{usd: 10}", extra_providers=provider,
                                        extra_models=model))
        claude.push(Reply(text="four words of answer", usage={"input_tokens": 100, "cache_read_input_tokens": 400,
                                                               "cache_creation_input_tokens": 20,
                                                               "output_tokens": 50}))
        client = gw.client("sk-acme")
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="sonnet", messages=MSG, max_tokens=64, stream=True) if c.choices)
        else:
            text = client.chat.completions.create(model="sonnet", messages=MSG, max_tokens=64).choices[0].message.content
        assert text == "four words of answer"
        s = spend(gw.url)["models"]["sonnet"]
        assert (s["prompt_tokens"], s["cached_tokens"], s["completion_tokens"]) == (520, 400, 50)
        # claude-sonnet-4-5 from the price table; cache writes at their own rate (cache_write)
        expected = (100 * 3.00 + 20 * 3.75 + 400 * 0.30 + 50 * 15.00) / 1e6
        assert s["spent_usd"] == pytest.approx(expected, abs=1e-12) and s["estimated_requests"] == 0
    finally:
        servers.call(claude.stop())


def test_cache_hits_cost_nothing(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 10}", defaults="cache: {enabled: true}"))
    client = gw.client("sk-acme")
    first = client.chat.completions.with_raw_response.create(model="small", messages=MSG, temperature=0)
    assert eventually(lambda: client.chat.completions.with_raw_response.create(
        model="small", messages=MSG, temperature=0).headers.get("x-cache") == "HIT")
    assert first.headers["x-cache"] == "MISS" and upstream.calls == 1
    s = spend(gw.url)
    assert s["requests"] == 1 and s["spent_usd"] == pytest.approx(small_cost(upstream), abs=1e-12)
    assert budget(gw.url)["budget"]["spent_usd"] == pytest.approx(small_cost(upstream), abs=1e-12)


def test_downgrade_past_soft_answers_from_the_small_model_with_headers(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 1, soft: 0.01, on_soft: downgrade}"))
    client = gw.client("sk-acme")
    raw = client.chat.completions.with_raw_response.create(model="large", messages=MSG, max_tokens=8)
    assert upstream.requests[-1]["model"] == "large-a" and "x-gateway-downgraded" not in raw.headers
    assert budget(gw.url)["budget"]["spent_usd"] >= 0.01  # past the soft threshold now
    raw = client.chat.completions.with_raw_response.create(model="large", messages=MSG, max_tokens=8)
    assert raw.parse().choices[0].message.content.startswith("Echo: please")
    assert upstream.requests[-1]["model"] == "small-a"
    assert raw.headers["x-gateway-downgraded"] == "true" and raw.headers["x-gateway-route"] == "small"
    assert raw.headers["x-gateway-downgraded-from"] == "large" and raw.headers["x-gateway-model"] == "small"
    routed = client.chat.completions.with_raw_response.create(
        model="auto", messages=MSG, max_tokens=8, extra_headers={"x-gateway-tier": "large"})
    assert upstream.requests[-1]["model"] == "small-a" and routed.headers["x-gateway-downgraded"] == "true"
    assert routed.headers["x-gateway-route"] == "small"
    s = spend(gw.url)
    assert s["models"]["small"]["requests"] == 2 and s["models"]["large"]["requests"] == 1
    assert s["models"]["small"]["spent_usd"] == pytest.approx(small_cost(upstream, 1) + small_cost(upstream, 2),
                                                             abs=1e-12)


def test_warn_past_soft_adds_remaining_headers(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 1, soft: 0.001, on_soft: warn}"))
    client = gw.client("sk-acme")
    client.chat.completions.create(model="large", messages=MSG, max_tokens=8)
    raw = client.chat.completions.with_raw_response.create(model="large", messages=MSG, max_tokens=8)
    assert upstream.requests[-1]["model"] == "large-a"  # warn never downgrades
    spent = served_cost(upstream.requests[0], "large")
    assert float(raw.headers["x-gateway-budget-remaining"]) == pytest.approx(1 - spent, abs=1e-6)
    assert float(raw.headers["x-gateway-budget-remaining-ratio"]) == pytest.approx(1 - spent, abs=1e-4)
    assert raw.headers["x-gateway-budget-reset"].endswith("-01T00:00:00Z")  # monthly by default


def test_hard_limit_is_a_non_retried_insufficient_quota_error(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 0.01, period: daily}"))
    client = gw.client("sk-acme", max_retries=2)
    client.chat.completions.create(model="small", messages=MSG, max_tokens=4)  # worst case ~0.004
    client.chat.completions.create(model="small", messages=MSG, max_tokens=4)
    calls, counts = upstream.calls, gw.services.budget.counts
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="small", messages=MSG, max_tokens=30)
    err = info.value
    assert err.status_code == 429 and err.code == "insufficient_quota"
    assert err.response.headers["x-should-retry"] == "false"
    assert "tenant 'acme'" in err.message and "$0.01 daily budget" in err.message
    assert "resets at " in err.message and err.message.rstrip(".").endswith("T00:00:00Z")
    assert counts["outcome_over_budget"] == 1  # one attempt reached the gateway: the SDK did not retry
    assert upstream.calls == calls
    b = budget(gw.url)["budget"]
    assert b["spent_usd"] <= 0.01 and b["reserved_usd"] == 0


def test_key_budget_refuses_that_key_only(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, key_budget="{usd: 0.003}"))
    ops, plain = gw.client("sk-acme-ops"), gw.client("sk-acme")
    ops.chat.completions.create(model="small", messages=MSG, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as info:
        ops.chat.completions.create(model="small", messages=MSG, max_tokens=1)
    assert "API key 'ops' of tenant 'acme'" in info.value.message
    plain.chat.completions.create(model="small", messages=MSG, max_tokens=1)  # the tenant has no budget
    status, data = admin_get(gw.url, "/admin/budgets")
    assert data["tenants"]["acme"]["budget"] is None
    assert data["tenants"]["acme"]["keys"]["ops"]["spent_usd"] == pytest.approx(small_cost(upstream, 0), abs=1e-12)


def test_shadow_budget_counts_but_never_refuses(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 0.001, mode: shadow, soft: 0.5, on_soft: downgrade}"))
    client = gw.client("sk-acme")
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="large", messages=MSG, max_tokens=4)
        assert "x-gateway-downgraded" not in raw.headers and "x-gateway-budget-remaining" not in raw.headers
    assert [r["model"] for r in upstream.requests] == ["large-a"] * 3
    counts = gw.services.budget.counts
    assert counts["outcome_shadow_over_budget"] == 3
    b = budget(gw.url)["budget"]
    assert b["state"] == "over" and b["spent_usd"] > 0.001  # recorded as spent even past the limit


def test_unpriced_models_cost_nothing_and_are_listed(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 1}"))
    gw.client("sk-acme").chat.completions.create(model="free", messages=MSG)
    s = spend(gw.url)
    assert s["models"]["free"] == {**s["models"]["free"], "spent_usd": 0.0, "requests": 1, "unpriced": True}
    assert s["unpriced_models"] == ["free"]
    assert admin_get(gw.url, "/admin/budgets")[1]["unpriced_models"] == ["free"]


def test_admin_api_needs_an_admin_key(make_gateway, upstream):
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 1}"))
    assert admin_get(gw.url, "/admin/spend", key="sk-acme")[0] == 403
    assert admin_get(gw.url, "/admin/budgets", key="")[0] == 401
    status, data = admin_get(gw.url, "/admin/spend?tenant=nobody")
    assert status == 404 and "unknown tenant 'nobody'" in data["error"]["message"]
    status, data = admin_get(gw.url, "/admin/spend?period=yearly")
    assert status == 400 and "unknown period 'yearly'" in data["error"]["message"]


def test_spend_cli_reads_a_running_gateway(make_gateway, upstream, capsys):
    from gateway.cli import main

    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 2, period: weekly}"))
    gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    assert main(["spend", "--url", gw.url, "--admin-key", ADMIN_KEY, "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    assert "acme" in out and "weekly" in out and "model small" in out and f"{small_cost(upstream):.6f}" in out
    assert main(["spend", "--url", gw.url, "--admin-key", ADMIN_KEY, "--budgets"]) == 0
    out = capsys.readouterr().out
    assert "tenant acme" in out and "weekly" in out and "unpriced models (cost counted as 0): free" in out
    assert main(["spend", "--url", gw.url, "--admin-key", "sk-acme"]) == 1
    assert "HTTP 403" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_daily_budget_resets_at_utc_midnight(make_gateway, upstream, request, backend):
    clock = FakeClock(1_767_225_540.0)  # 2025-12-31T23:59:00Z
    state = "backend: memory" if backend == "memory" else f"backend: redis\n  redis_url: {request.getfixturevalue('redis_url')}"
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 0.01, period: daily}", state=state), clock=clock)
    client = gw.client("sk-acme")
    for _ in range(2):
        client.chat.completions.create(model="small", messages=MSG, max_tokens=4)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="small", messages=MSG, max_tokens=30)
    assert info.value.message.endswith("it resets at 2026-01-01T00:00:00Z.")
    clock.advance(59.0)  # 23:59:59, still the same day
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="small", messages=MSG, max_tokens=30)
    clock.advance(1.0)  # 2026-01-01T00:00:00Z: a new period
    client.chat.completions.create(model="small", messages=MSG, max_tokens=30)
    now, before = spend(gw.url), spend(gw.url, period="previous")
    assert (now["from"], now["to"]) == ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")
    assert now["requests"] == 1 and before["requests"] == 2
    assert before["spent_usd"] == pytest.approx(small_cost(upstream, 0) + small_cost(upstream, 1), abs=1e-12)
    b = budget(gw.url)["budget"]
    assert b["spent_usd"] == pytest.approx(small_cost(upstream, 2), abs=1e-12)
    assert b["resets_at"] == "2026-01-02T00:00:00Z"


def test_prices_used_by_the_tests_are_the_policy_prices():
    assert PRICES["small"] == (100.0, 200.0)  # the policy text is built from PRICES
