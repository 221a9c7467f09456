"""End to end through the gateway: the openai SDK talks to an Anthropic upstream (real wire format)."""

from __future__ import annotations

import json
import textwrap

import openai
import pytest

from tests.support.mock_anthropic import ErrorReply, Reply


@pytest.fixture
def gw(make_gateway, claude):
    return make_gateway(textwrap.dedent(f"""\
        version: 1
        providers:
          claude: {{type: anthropic, base_url: "{claude.url}", api_key: {claude.api_key}}}
        models:
          sonnet:
            context_window: 200000
            price: {{input: 3.0, output: 15.0}}
            deployments: [{{provider: claude, model: claude-sonnet-4-5}}]
        tenants:
          acme: {{api_keys: [sk-acme], models: [sonnet]}}
        """))


def test_chat_with_system_prompt(gw, claude):
    out = gw.client("sk-acme").chat.completions.create(
        model="sonnet", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}])
    assert out.choices[0].message.content == "Mock answer to: hello"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    sent = claude.requests[-1]
    assert sent["system"] == "be brief" and sent["model"] == "claude-sonnet-4-5"
    assert claude.headers[-1]["x-api-key"] == claude.api_key
    assert "authorization" not in {k.lower() for k in claude.headers[-1]}


def test_stream_text(gw):
    chunks = list(gw.client("sk-acme").chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock answer to: stream me"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_tool_calls_both_ways(gw, claude):
    claude.push(Reply(tool_calls=[("get_weather", {"city": "Paris"})]))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    out = gw.client("sk-acme").chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "weather?"}], tools=tools)
    call = out.choices[0].message.tool_calls[0]
    assert out.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert claude.requests[-1]["tools"][0]["name"] == "get_weather"


async def test_async_stream_tool_call(gw, claude):
    claude.push(Reply(tool_calls=[("lookup", {"q": "x"})]))
    client = gw.aclient("sk-acme")
    stream = await client.chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "go"}], stream=True,
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}])
    args = ""
    async for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                args += tc.function.arguments or ""
    assert json.loads(args) == {"q": "x"}
    await client.close()


def test_overloaded_maps_to_openai_error(gw, claude):
    claude.push(ErrorReply.bad_request("roles must alternate"))
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client("sk-acme").chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "x"}])
    assert "roles must alternate" in exc.value.message
    assert claude.api_key not in exc.value.message


def test_stream_error_event_raises_in_sdk(gw, claude):
    claude.push(Reply(error_after=3))
    with pytest.raises(openai.APIError):
        list(gw.client("sk-acme").chat.completions.create(
            model="sonnet", messages=[{"role": "user", "content": "a long answer please"}], stream=True))
