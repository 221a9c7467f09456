"""End to end: the openai and anthropic SDKs through the gateway to a loopback Gemini API (real wire format)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import anthropic
import openai
import pytest

from gateway.policy.loader import load_policy
from tests.support.harness import eventually
from tests.support.mock_gemini import ErrorReply, MockGemini, Reply
from tests.support.prom import scrape

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
PRICE = {"input": 0.30, "cached_input": 0.03, "output": 2.50}


@pytest.fixture
def gem(servers):
    server = servers.call(MockGemini().start())
    yield server
    servers.call(server.stop())


def gemini_policy(gem: MockGemini, backup_url: str) -> str:
    return textwrap.dedent(f"""\
        version: 1
        providers:
          gem:
            type: gemini
            base_url: "{gem.url}"
            api_key: {gem.api_key}
            timeouts: {{connect_s: 1, first_byte_s: 2, total_s: 10}}
          backup: {{type: openai, base_url: "{backup_url}", api_key: sk-backup}}
        models:
          flash:
            price: {{input: {PRICE['input']}, cached_input: {PRICE['cached_input']}, output: {PRICE['output']}}}
            deployments: [{{provider: gem, model: gemini-2.5-flash}}, {{provider: backup, model: small-b}}]
          emb:
            price: {{input: 0.15, output: 0.0}}
            deployments: [{{provider: gem, model: gemini-embedding-001}}]
        retry: {{attempts: 1, backoff_ms: 0}}
        cache: {{enabled: false}}
        tenants:
          acme: {{api_keys: [sk-acme], models: "*"}}
        """)


@pytest.fixture
def gw(make_gateway, gem, backup):
    return make_gateway(gemini_policy(gem, backup.url))


def ask(gw, text: str = "hello gemini", **kw):
    return gw.client("sk-acme").chat.completions.with_raw_response.create(
        model="flash", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": text}], **kw)


def test_plain_chat_reaches_gemini_with_its_wire_format(gw, gem, backup):
    raw = ask(gw)
    out = raw.parse()
    assert out.choices[0].message.content == "Mock answer to: hello gemini"
    assert out.choices[0].finish_reason == "stop" and raw.headers["x-gateway-provider"] == "gem"
    sent = gem.requests[-1]
    assert sent["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert sent["contents"] == [{"role": "user", "parts": [{"text": "hello gemini"}]}]
    assert gem.paths[-1] == "/v1beta/models/gemini-2.5-flash:generateContent" and backup.calls == 0


def test_stream_with_usage(gw):
    chunks = list(gw.client("sk-acme").chat.completions.create(
        model="flash", messages=[{"role": "user", "content": "stream me please"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Mock answer to: stream me please"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 6
    # a stream is metered and charged once (when the request completes), from the upstream's own counts
    assert eventually(lambda: scrape(gw.url).value("llm_gateway_tokens_total", tenant="acme", type="completion") > 0)
    s = scrape(gw.url)
    assert s.value("llm_gateway_tokens_total", tenant="acme", type="completion") == 6
    expected = (usage.prompt_tokens * PRICE["input"] + 6 * PRICE["output"]) / 1e6
    assert s.value("llm_gateway_cost_usd_total", tenant="acme") == pytest.approx(expected, rel=1e-6)


def test_tools_round_trip(gw, gem):
    gem.push(Reply(calls=[("get_weather", {"city": "Paris"})], signature="c2lnbmVkLWNhbGw="))
    client = gw.client("sk-acme")
    messages = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(model="flash", messages=messages, tools=TOOLS)
    [call] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    gem.push(Reply(text="It is 21C in Paris."))
    second = client.chat.completions.create(model="flash", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "It is 21C in Paris."
    assert gem.requests[-1]["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                     "thoughtSignature": "c2lnbmVkLWNhbGw="}]},  # the signature came back
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}]}]


async def test_streamed_tool_call(gw, gem):
    gem.push(Reply(calls=[("get_weather", {"city": "Rome"})]))
    client = gw.aclient("sk-acme")
    stream = await client.chat.completions.create(
        model="flash", messages=[{"role": "user", "content": "go"}], stream=True, tools=TOOLS)
    args, finish = "", None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or []:
                args += tc.function.arguments or ""
    await client.close()
    assert json.loads(args) == {"city": "Rome"} and finish == "tool_calls"


def test_json_schema_response_format(gw, gem):
    gem.push(Reply(text='{"name": "Ada"}'))
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
              "additionalProperties": False}
    raw = ask(gw, response_format={"type": "json_schema",
                                   "json_schema": {"name": "person", "strict": True, "schema": schema}})
    assert json.loads(raw.parse().choices[0].message.content) == {"name": "Ada"}
    config = gem.requests[-1]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == {"type": "OBJECT", "properties": {"name": {"type": "STRING"}},
                                        "required": ["name"]}


def test_embeddings(gw, gem):
    out = gw.client("sk-acme").embeddings.create(model="emb", input=["one", "two words"], dimensions=6)
    assert [len(d.embedding) for d in out.data] == [6, 6] and out.data[1].index == 1
    assert gem.paths[-1] == "/v1beta/models/gemini-embedding-001:batchEmbedContents"


def test_a_429_fails_over_to_the_backup(gw, gem, backup):
    gem.push(ErrorReply.exhausted())
    raw = ask(gw, "who answers")
    assert raw.headers["x-gateway-provider"] == "backup"
    assert raw.parse().choices[0].message.content == "Echo: who answers"
    assert backup.calls == 1


def test_a_5xx_before_the_first_byte_fails_over(gw, gem, backup):
    gem.push(ErrorReply.internal())
    chunks = list(gw.client("sk-acme").chat.completions.create(
        model="flash", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hi"
    assert backup.calls == 1


def test_a_cut_stream_ends_with_the_error_event(gw, gem):
    gem.push(Reply(cut_after=2))
    with pytest.raises(openai.APIError):
        list(gw.client("sk-acme").chat.completions.create(
            model="flash", messages=[{"role": "user", "content": "a long answer please"}], stream=True))


def test_a_client_error_is_answered_in_the_openai_shape(gw, gem, backup):
    gem.push(ErrorReply(400, "INVALID_ARGUMENT", "Invalid value at 'contents[0]'"))
    with pytest.raises(openai.BadRequestError) as exc:
        ask(gw)
    assert "Invalid value" in exc.value.message and exc.value.code == "invalid_argument"
    assert gem.api_key not in exc.value.message and backup.calls == 0


def test_usage_and_cost_are_charged_once(gw, gem):
    gem.push(Reply(thoughts=4, cached=2))
    out = ask(gw, "count my tokens").parse()
    usage = out.usage
    assert usage.completion_tokens_details.reasoning_tokens == 4
    assert usage.prompt_tokens_details.cached_tokens == 2
    expected = ((usage.prompt_tokens - 2) * PRICE["input"] + 2 * PRICE["cached_input"]
                + usage.completion_tokens * PRICE["output"]) / 1e6
    assert eventually(lambda: scrape(gw.url).value("llm_gateway_cost_usd_total", tenant="acme") > 0)
    s = scrape(gw.url)
    assert s.value("llm_gateway_cost_usd_total", tenant="acme") == pytest.approx(expected, rel=1e-6)
    assert s.value("llm_gateway_tokens_total", tenant="acme", type="completion") == usage.completion_tokens


def test_anthropic_sdk_on_messages_through_gemini(gw, gem):
    client = anthropic.Anthropic(base_url=gw.url, api_key="sk-acme", max_retries=0, timeout=15)
    message = client.messages.create(model="flash", max_tokens=100, system="be brief",
                                     messages=[{"role": "user", "content": "hi from claude code"}])
    assert message.content[0].text == "Mock answer to: hi from claude code"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    assert gem.requests[-1]["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert gem.requests[-1]["generationConfig"]["maxOutputTokens"] == 100


def test_the_example_policy_loads_with_only_the_key_set():
    policy = load_policy(str(Path(__file__).parents[1] / "policies" / "gemini.yaml"), env={"GEMINI_API_KEY": "k"})
    assert policy.providers["gemini"].type == "gemini"
    assert policy.providers["gemini"].base_url == "https://generativelanguage.googleapis.com"
    assert {"flash", "pro", "embed"} <= set(policy.models)


def test_responses_api_through_gemini(gw, gem):
    out = gw.client("sk-acme").responses.create(model="flash", instructions="be brief", input="hi responses")
    assert out.output_text == "Mock answer to: hi responses" and out.usage.output_tokens > 0
    assert gem.requests[-1]["systemInstruction"] == {"parts": [{"text": "be brief"}]}
