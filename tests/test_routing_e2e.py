"""Small/large routing through the gateway with the openai SDK: every rule, shadow mode, context fallback."""

from __future__ import annotations

import openai
import pytest

from tests.support.policies import basic_policy

RULES = """
auto:
  route:
    small: small
    large: large
    large_when:
      - header: {x-gateway-tier: large}
      - tenant: [gamma]
      - has_tools: true
      - has_images: true
      - response_format: json_schema
      - messages_over: 3
      - matches: "(?i)\\\\bsql\\\\b"
      - score_over: 0.45
      - prompt_tokens_over: 1500
shadowed:
  route:
    small: small
    large: large
    mode: shadow
    large_when: [{has_tools: true}]
tiny:
  context_window: 100
  context_fallback: small
  deployments: [{provider: upstream, model: tiny-a}]
"""
GAMMA = """
gamma:
  api_keys: [sk-gamma]
  models: [auto]
"""
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
HARD = ("Design an algorithm for this and prove it correct step by step; analyze the trade-offs and optimize it. "
        "Why does the naive one fail? Which is faster? What breaks first?\n```python\ndef f(x):\n    return x\n```")


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def gw(make_gateway, upstream):
    return make_gateway(basic_policy(upstream.url, extra_models=RULES, extra_tenant=GAMMA))


CASES = {
    "header": ({"messages": user("hi"), "extra_headers": {"X-Gateway-Tier": "large"}}, "sk-acme"),
    "tenant": ({"messages": user("hi")}, "sk-gamma"),
    "has_tools": ({"messages": user("hi"), "tools": [TOOL]}, "sk-acme"),
    "has_images": ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, "sk-acme"),
    "response_format": ({"messages": user("hi"), "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}, "sk-acme"),
    "messages_over": ({"messages": user("a") + [{"role": "assistant", "content": "b"}] + user("c") + user("d")},
                      "sk-acme"),
    "matches": ({"messages": user("please write SQL to count users")}, "sk-acme"),
    "score_over": ({"messages": user(HARD)}, "sk-acme"),
    "prompt_tokens_over": ({"messages": user("hello " * 1200)}, "sk-acme"),
}


@pytest.mark.parametrize("rule", list(CASES))
def test_each_rule_sends_to_large_and_says_which(gw, upstream, rule):
    kwargs, key = CASES[rule]
    raw = gw.client(key).chat.completions.with_raw_response.create(model="auto", **kwargs)
    assert raw.parse().choices[0].message.content.startswith("Echo:")
    assert raw.headers["x-gateway-route"] == f"large; rule={rule}"
    assert raw.headers["x-gateway-model"] == "large"
    assert raw.headers["x-gateway-provider"] == "upstream"
    assert upstream.requests[-1]["model"] == "large-a"


def test_no_rule_matches_small_serves(gw, upstream):
    raw = gw.client("sk-acme").chat.completions.with_raw_response.create(
        model="auto", messages=user("what is 2+2"), extra_headers={"x-gateway-tier": "medium"})
    assert raw.headers["x-gateway-route"] == "small"
    assert raw.headers["x-gateway-model"] == "small"
    assert upstream.requests[-1]["model"] == "small-a"


def test_routing_headers_on_streams(gw, upstream):
    with gw.client("sk-acme").chat.completions.with_streaming_response.create(
            model="auto", messages=user("hi"), tools=[TOOL], stream=True) as resp:
        assert resp.headers["x-gateway-route"] == "large; rule=has_tools"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == "Echo: hi"
    assert upstream.requests[-1]["model"] == "large-a"


def test_shadow_mode_decides_and_counts_but_serves_small(gw, upstream):
    raw = gw.client("sk-acme").chat.completions.with_raw_response.create(
        model="shadowed", messages=user("hi"), tools=[TOOL])
    assert raw.headers["x-gateway-route"] == "small; shadow=large; rule=has_tools"
    assert raw.headers["x-gateway-model"] == "small"
    assert upstream.requests[-1]["model"] == "small-a"
    gw.client("sk-acme").chat.completions.create(model="shadowed", messages=user("hi"))
    decisions = gw.services.router_stats.decisions
    assert decisions[("shadowed", "small", "large", "has_tools")] == 1
    assert decisions[("shadowed", "small", "small", "")] == 1


PLAIN_ROUTE = """
auto:
  route: {small: small, large: large, large_when: [{has_tools: true}]}
"""


def test_context_window_fallback_of_a_route(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url, extra_models=PLAIN_ROUTE))
    raw = gw.client("sk-acme").chat.completions.with_raw_response.create(model="auto", messages=user("word " * 3300))
    assert raw.headers["x-gateway-route"] == "large; rule=context_window"
    assert raw.headers["x-gateway-model"] == "large"
    assert upstream.requests[-1]["model"] == "large-a"
    assert gw.services.router_stats.context_fallbacks[("small", "large")] == 1


def test_declared_context_fallback_of_a_served_model(gw, upstream):
    client = gw.client("sk-acme")
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=user("short"))
    assert raw.headers["x-gateway-model"] == "tiny" and upstream.requests[-1]["model"] == "tiny-a"
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=user("word " * 200))
    assert raw.headers["x-gateway-model"] == "small" and upstream.requests[-1]["model"] == "small-a"


def test_prompt_that_fits_nowhere_is_a_clear_400(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url, extra_models=PLAIN_ROUTE))
    calls = upstream.calls
    with pytest.raises(openai.BadRequestError) as info:
        gw.client("sk-acme").chat.completions.create(model="auto", messages=user("word " * 30000))
    err = info.value
    assert err.code == "context_length_exceeded"
    assert "small (4000), large (32000)" in err.message
    assert upstream.calls == calls
