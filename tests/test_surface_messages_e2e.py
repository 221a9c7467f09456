"""``POST /v1/messages`` end to end with the official ``anthropic`` SDK, through the gateway to an
OpenAI-compatible deployment (``gpt``) and to an Anthropic one (``sonnet``), both on loopback mocks."""

from __future__ import annotations

import textwrap

import anthropic
import httpx
import pytest

from tests.support.mock_anthropic import MockAnthropic, Reply
from tests.support.mock_openai import Fault
from tests.support.scripted_openai import Said, ScriptedOpenAI

TIMEOUTS = "{connect_s: 1, first_byte_s: 2, total_s: 10}"
TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
HELLO = [{"role": "user", "content": "hello there"}]
TARGETS = ["gpt", "sonnet"]



@pytest.fixture
def oai_backup(servers):
    mock = servers.call(ScriptedOpenAI("backup").start())
    yield mock
    servers.call(mock.stop())



@pytest.fixture
def gw(make_gateway, oai, oai_backup, claude):
    return make_gateway(textwrap.dedent(f"""\
        version: 1
        providers:
          primary: {{type: openai, base_url: "{oai.url}", api_key: sk-primary, timeouts: {TIMEOUTS}}}
          backup: {{type: openai, base_url: "{oai_backup.url}", api_key: sk-backup, timeouts: {TIMEOUTS}}}
          claude: {{type: anthropic, base_url: "{claude.url}", api_key: {claude.api_key}, timeouts: {TIMEOUTS}}}
        models:
          gpt:
            context_window: 100000
            deployments: [{{provider: primary, model: gpt-up}}]
          sonnet:
            context_window: 200000
            deployments: [{{provider: claude, model: claude-sonnet-4-5}}]
          duo:
            strategy: fallback
            deployments: [{{provider: primary, model: m-primary}}, {{provider: backup, model: m-backup}}]
          strict:
            on_untranslatable: error
            deployments: [{{provider: primary, model: gpt-up}}]
        retry: {{attempts: 1, backoff_ms: 0}}
        cache: {{enabled: false}}
        tenants:
          acme: {{api_keys: [sk-acme], models: "*"}}
          lim: {{api_keys: [sk-lim], models: "*", rate_limit: {{rpm: 2}}}}
        """))


def client(gw, key: str = "sk-acme", **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=15.0, **kw)


def echo(model: str, text: str) -> str:
    """What each mock answers unscripted."""
    return f"Echo: {text}" if model == "gpt" else f"Mock answer to: {text}"


@pytest.mark.parametrize("model", TARGETS)
def test_plain_message(gw, oai, claude, model):
    msg = client(gw).messages.create(model=model, max_tokens=200, messages=HELLO, system="be brief")
    # an anthropic deployment answers with its own bytes (the lossless path): its model id
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == {"gpt": "gpt", "sonnet": "claude-sonnet-4-5"}[model]
    assert msg.content[0].type == "text" and msg.content[0].text == echo(model, "hello there")
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    if model == "gpt":
        sent = oai.requests[-1]
        assert sent["model"] == "gpt-up" and sent["messages"][0] == {"role": "system", "content": "be brief"}
    else:
        sent = claude.requests[-1]
        assert sent == {"model": "claude-sonnet-4-5", "max_tokens": 200, "messages": HELLO, "system": "be brief",
                        "stream": False}


@pytest.mark.parametrize("model", TARGETS)
def test_stream_final_message(gw, model):
    with client(gw).messages.stream(model=model, max_tokens=200, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1  # really streamed
    assert "".join(pieces) == final.content[0].text == echo(model, "hello there")
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def script_tool_turn(model: str, oai: ScriptedOpenAI, claude: MockAnthropic) -> None:
    if model == "gpt":
        oai.say(Said(calls=[("get_weather", {"city": "Paris"})]), Said(text="It is 18C in Paris."))
    else:
        claude.push(Reply(tool_calls=[("get_weather", {"city": "Paris"})]), Reply(text="It is 18C in Paris."))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", TARGETS)
def test_tool_use_round_trip(gw, oai, claude, model, stream):
    script_tool_turn(model, oai, claude)
    api = client(gw).messages
    ask = [{"role": "user", "content": "Weather in Paris?"}]

    def turn(messages):
        if not stream:
            return api.create(model=model, max_tokens=300, messages=messages, tools=TOOLS)
        with api.stream(model=model, max_tokens=300, messages=messages, tools=TOOLS) as s:
            return s.get_final_message()

    first = turn(ask)
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris"} and use.id
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "18C, sunny"}
    second = turn([*ask, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}])
    assert second.stop_reason == "end_turn" and second.content[0].text == "It is 18C in Paris."
    if model == "gpt":
        sent = oai.requests[-1]
        assert sent["tools"][0]["function"]["name"] == "get_weather"
        call = sent["messages"][-2]["tool_calls"][0]
        assert call["function"]["name"] == "get_weather" and call["id"] == use.id
        assert sent["messages"][-1] == {"role": "tool", "tool_call_id": use.id, "content": "18C, sunny"}
    else:
        sent = claude.requests[-1]
        assert sent["messages"][1]["content"][-1]["type"] == "tool_use"
        block = sent["messages"][-1]["content"][0]
        assert block["type"] == "tool_result" and block["tool_use_id"] == use.id
        assert block["content"] == "18C, sunny"


def test_count_tokens(gw, oai):
    api = client(gw).messages
    short = api.count_tokens(model="gpt", messages=HELLO)
    long = api.count_tokens(model="sonnet", messages=[{"role": "user", "content": "word " * 400}], tools=TOOLS)
    assert 0 < short.input_tokens < long.input_tokens
    assert long.input_tokens >= 400 * 5 // 4  # ~4 characters per token
    with pytest.raises(anthropic.NotFoundError):
        api.count_tokens(model="no-such-model", messages=HELLO)
    assert oai.calls == 0  # an estimate: no model call


def test_auth_by_x_api_key_and_by_bearer(gw):
    # this SDK sends its key as a Bearer token; Claude Code with ANTHROPIC_API_KEY sends x-api-key
    sdk = client(gw)
    assert sdk.auth_headers == {"Authorization": "Bearer sk-acme"}
    assert sdk.messages.create(model="gpt", max_tokens=50, messages=HELLO).content[0].text == echo("gpt", "hello there")
    body = {"model": "gpt", "max_tokens": 50, "messages": HELLO}
    plain = {"anthropic-version": "2023-06-01"}
    keyed = httpx.post(gw.url + "/v1/messages", json=body, headers={**plain, "x-api-key": "sk-acme"}, timeout=15)
    assert keyed.status_code == 200 and keyed.json()["content"][0]["text"] == echo("gpt", "hello there")
    wrong = httpx.post(gw.url + "/v1/messages", json=body, headers={**plain, "x-api-key": "sk-nope"}, timeout=15)
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError) as exc:
        client(gw, "sk-wrong").messages.create(model="gpt", max_tokens=50, messages=HELLO)
    assert exc.value.status_code == 401 and exc.value.body["error"]["type"] == "authentication_error"


def test_unknown_model_is_not_found(gw, oai):
    with pytest.raises(anthropic.NotFoundError) as exc:
        client(gw).messages.create(model="no-such-model", max_tokens=50, messages=HELLO)
    assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == "not_found_error"
    assert oai.calls == 0


def test_rate_limit_429_with_retry_after_and_anthropic_headers(gw, oai):
    api = client(gw, "sk-lim").messages
    raw = api.with_raw_response.create(model="gpt", max_tokens=50, messages=HELLO)
    assert raw.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "1"
    api.create(model="gpt", max_tokens=50, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as exc:
        api.create(model="gpt", max_tokens=50, messages=HELLO)
    assert exc.value.status_code == 429 and exc.value.body["error"]["type"] == "rate_limit_error"
    assert int(exc.value.response.headers["retry-after"]) >= 1
    assert oai.calls == 2
    unlimited = client(gw).messages.with_raw_response.create(model="gpt", max_tokens=50, messages=HELLO)
    assert "anthropic-ratelimit-requests-limit" not in unlimited.headers


def test_every_deployment_failing_is_529_overloaded(gw, oai, oai_backup):
    oai.push(Fault(500))
    oai_backup.push(Fault(500))
    with pytest.raises(anthropic.OverloadedError) as exc:
        client(gw).messages.create(model="duo", max_tokens=50, messages=HELLO)
    assert exc.value.status_code == 529 and exc.value.body["error"]["type"] == "overloaded_error"
    assert (oai.calls, oai_backup.calls) == (1, 1)  # one attempt each: no retries


def test_stream_fails_over_before_the_first_byte(gw, oai, oai_backup):
    oai.push(Fault(500))
    with client(gw).messages.stream(model="duo", max_tokens=100, messages=HELLO) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "Echo: hello there" and final.stop_reason == "end_turn"
    assert (oai.calls, oai_backup.calls) == (1, 1)
    assert oai_backup.requests[0]["model"] == "m-backup"


@pytest.mark.parametrize("model", TARGETS)
def test_stream_cut_after_the_first_byte_raises_in_the_sdk(gw, oai, claude, model):
    long = [{"role": "user", "content": "tell me a rather long story about a lighthouse keeper"}]
    if model == "gpt":
        oai.push(Fault(cut_after=3))
    else:
        claude.push(Reply(cut_after=6))
    seen: list[str] = []
    with (pytest.raises(anthropic.APIStatusError) as exc,
          client(gw).messages.stream(model=model, max_tokens=200, messages=long) as stream):
        for text in stream.text_stream:
            seen.append(text)
    assert seen, "the answer had started before the cut"
    assert exc.value.body["error"]["type"] == "overloaded_error"


def test_dropped_features_are_named(gw, oai):
    system = [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]
    raw = client(gw).messages.with_raw_response.create(model="gpt", max_tokens=50, messages=HELLO, system=system,
                                                       extra_body={"top_k": 5})
    assert set(raw.headers["x-gateway-dropped"].split(",")) == {"cache_control", "top_k"}
    assert raw.parse().content[0].text == echo("gpt", "hello there")
    sent = oai.requests[-1]
    assert "top_k" not in sent and sent["messages"][0] == {"role": "system", "content": "be brief"}
    clean = client(gw).messages.with_raw_response.create(model="gpt", max_tokens=50, messages=HELLO)
    assert "x-gateway-dropped" not in clean.headers


def test_on_untranslatable_error_refuses_with_400(gw, oai):
    with pytest.raises(anthropic.BadRequestError) as exc:
        client(gw).messages.create(model="strict", max_tokens=50, messages=HELLO, extra_body={"top_k": 5})
    assert exc.value.status_code == 400 and exc.value.body["error"]["type"] == "invalid_request_error"
    assert "top_k" in exc.value.body["error"]["message"]
    assert oai.calls == 0
    ok = client(gw).messages.create(model="strict", max_tokens=50, messages=HELLO)  # nothing to drop: served
    assert ok.content[0].text == echo("gpt", "hello there")
