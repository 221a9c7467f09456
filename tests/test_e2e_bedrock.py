"""End to end: the openai SDK through the gateway to a loopback Bedrock Runtime that verifies SigV4.

Credentials come from the environment (the botocore chain), with every other source of the chain
(config files, instance metadata) switched off so nothing leaves the machine.
"""

from __future__ import annotations

import json
import textwrap

import openai
import pytest

pytest.importorskip("botocore")  # the [aws] extra

from gateway.providers.openai import LEAN
from tests.support.aws_wire import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.support.budget import ADMIN_KEY, spend
from tests.support.mock_bedrock import ErrorReply, MockBedrock, Reply, vector

CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PRICE = (3.0, 15.0)  # USD per 1M tokens
MSG = [{"role": "user", "content": "hello there"}]
TOOL = {"type": "function", "function": {"name": "get_weather",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def bedrock(servers, aws_env):
    server = servers.call(MockBedrock().start())
    yield server
    servers.call(server.stop())


@pytest.fixture
def gw(make_gateway, bedrock, backup):
    return make_gateway(textwrap.dedent(f"""\
        version: 1
        admin: {{api_keys: [{ADMIN_KEY}]}}
        providers:
          aws:
            type: bedrock
            region: us-east-1
            base_url: "{bedrock.url}"
            timeouts: {{connect_s: 1, first_byte_s: 2, total_s: 10}}
          backup: {{type: openai, base_url: "{backup.url}", api_key: sk-backup,
                    timeouts: {{connect_s: 1, first_byte_s: 2, total_s: 10}}}}
        models:
          claude:
            price: {{input: {PRICE[0]}, output: {PRICE[1]}}}
            deployments: [{{provider: aws, model: "{CLAUDE}"}}, {{provider: backup, model: small-b}}]
          titan:
            price: {{input: 0.02, output: 0}}
            deployments: [{{provider: aws, model: "amazon.titan-embed-text-v2:0"}}]
          cohere:
            deployments: [{{provider: aws, model: cohere.embed-english-v3}}]
        retry: {{attempts: 1, backoff_ms: 0}}
        cache: {{enabled: false}}
        tenants:
          acme: {{api_keys: [sk-acme], models: "*", budget: {{usd: 100}}}}
        """))


def test_chat_is_signed_with_the_model_id_percent_encoded(gw, bedrock):
    raw = gw.client("sk-acme").chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "system", "content": "be brief"}, *MSG], max_tokens=64, stop=["zzz"])
    out = raw.parse()
    assert out.choices[0].message.content == "Mock answer to: hello there"
    assert out.choices[0].finish_reason == "stop" and out.model == CLAUDE
    assert raw.headers["x-gateway-provider"] == "aws"
    assert bedrock.signature_errors == [] and bedrock.calls == 1
    assert bedrock.raw_paths[-1] == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert bedrock.models[-1] == CLAUDE
    sent = bedrock.requests[-1]
    assert sent["system"] == [{"text": "be brief"}]
    assert sent["inferenceConfig"] == {"maxTokens": 64, "stopSequences": ["zzz"]}
    assert "Credential=" + TEST_ACCESS_KEY in bedrock.headers[-1]["authorization"]


@pytest.mark.skipif(not LEAN, reason="this aiohttp keeps session.post")
def test_calls_go_out_as_signed_on_pooled_connections_without_a_cookie_jar(make_gateway, servers, aws_env):
    """``exchange.post``: the path byte for byte as signed, one ``Accept``, the host as signed, no cookie
    jar (``session.post``'s would send the upstream's cookie back; ``localhost``: the jar skips IP hosts),
    and a finished stream's connection back in the pool."""
    server = servers.call(MockBedrock().start())
    server.set_cookie = "session=tenant-a; Path=/"
    try:
        gw = make_gateway(textwrap.dedent(f"""\
            version: 1
            providers:
              aws: {{type: bedrock, region: us-east-1, base_url: "http://localhost:{server.port}"}}
            models:
              claude: {{deployments: [{{provider: aws, model: "{CLAUDE}"}}]}}
            cache: {{enabled: false}}
            tenants:
              acme: {{api_keys: [sk-acme], models: "*"}}
            """))
        client = gw.client("sk-acme")
        assert client.chat.completions.create(model="claude", messages=MSG).choices[0].message.content
        chunks = client.chat.completions.create(model="claude", messages=MSG, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Mock answer to: hello there"
        assert client.chat.completions.create(model="claude", messages=MSG).choices[0].message.content
    finally:
        servers.call(server.stop())
    path = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/"
    assert server.raw_paths == [path + "converse", path + "converse-stream", path + "converse"]
    assert server.signature_errors == []
    assert [h["accept"] for h in server.headers] == ["application/json", "application/vnd.amazon.eventstream",
                                                      "application/json"]  # one each: a second would be joined
    assert {h["host"] for h in server.headers} == {f"localhost:{server.port}"}
    assert [h.get("cookie") for h in server.headers] == [None, None, None]
    assert len(set(server.ports)) == 1  # one connection for all three


def test_stream_text_with_usage(gw, bedrock):
    chunks = list(gw.client("sk-acme").chat.completions.create(
        model="claude", messages=MSG, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock answer to: hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert bedrock.actions == ["converse-stream"] and bedrock.signature_errors == []


def test_tool_round_trip(gw, bedrock):
    client = gw.client("sk-acme")
    bedrock.push(Reply(tool_calls=[("get_weather", {"city": "Paris"})]))
    first = client.chat.completions.create(model="claude", messages=MSG, tools=[TOOL], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert bedrock.requests[-1]["toolConfig"]["toolChoice"] == {"any": {}}
    history = [*MSG, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model="claude", messages=history, tools=[TOOL])
    assert second.choices[0].message.content.startswith("Mock answer to:")
    sent = bedrock.requests[-1]["messages"]
    assert sent[1]["content"][-1] == {"toolUse": {"toolUseId": call.id, "name": "get_weather", "input": {"city": "Paris"}}}
    assert sent[2]["content"][0] == {"toolResult": {"toolUseId": call.id, "content": [{"text": "sunny"}]}}


def test_streamed_tool_call(gw, bedrock):
    bedrock.push(Reply(tool_calls=[("get_weather", {"city": "Lima"})]))
    chunks = list(gw.client("sk-acme").chat.completions.create(model="claude", messages=MSG, tools=[TOOL],
                                                               stream=True))
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "get_weather" and calls[0].id == "tooluse_mock_0"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Lima"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_embeddings_titan_and_cohere(gw, bedrock):
    client = gw.client("sk-acme")
    titan = client.embeddings.create(model="titan", input=["one two", "three"], dimensions=256)
    assert [d.embedding for d in titan.data] == [pytest.approx(vector("one two", 256), abs=1e-4),
                                                 pytest.approx(vector("three", 256), abs=1e-4)]
    assert titan.usage.prompt_tokens == 3
    assert bedrock.requests[-2:] in ([{"inputText": "one two", "dimensions": 256}, {"inputText": "three", "dimensions": 256}],
                                     [{"inputText": "three", "dimensions": 256}, {"inputText": "one two", "dimensions": 256}])
    assert bedrock.raw_paths[-1] == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    cohere = client.embeddings.create(model="cohere", input="find me", encoding_format="float")
    assert cohere.data[0].embedding == pytest.approx(vector("find me", 1024), abs=1e-4)
    assert bedrock.requests[-1] == {"texts": ["find me"], "input_type": "search_document"}
    assert cohere.usage.prompt_tokens == 2 and bedrock.signature_errors == []


@pytest.mark.parametrize("fault", [ErrorReply.throttled(429), ErrorReply.throttled(400), ErrorReply.internal(),
                                   ErrorReply.unavailable()], ids=["throttle-429", "throttle-400", "500", "503"])
def test_throttle_or_5xx_before_the_first_byte_fails_over(gw, bedrock, backup, fault):
    bedrock.push(fault)
    raw = gw.client("sk-acme").chat.completions.with_raw_response.create(model="claude", messages=MSG)
    assert raw.headers["x-gateway-provider"] == "backup" and backup.calls == 1 and bedrock.calls == 1
    bedrock.push(fault)
    text = "".join(c.choices[0].delta.content or "" for c in gw.client("sk-acme").chat.completions.create(
        model="claude", messages=MSG, stream=True) if c.choices)
    assert text and backup.calls == 2 and bedrock.calls == 2


def test_exception_before_the_first_event_fails_over(gw, bedrock, backup):
    bedrock.push(Reply(exception_after=0, exception="throttlingException"))
    chunks = list(gw.client("sk-acme").chat.completions.create(model="claude", messages=MSG, stream=True))
    assert chunks and backup.calls == 1


@pytest.mark.parametrize("reply", [Reply(exception_after=3), Reply(cut_after=3)], ids=["exception", "cut"])
def test_stream_broken_mid_answer_ends_with_the_error_event(gw, bedrock, backup, reply):
    bedrock.push(reply)
    seen = []
    with pytest.raises(openai.APIError):
        for chunk in gw.client("sk-acme").chat.completions.create(model="claude", messages=MSG, stream=True):
            seen.append(chunk)
    assert seen and backup.calls == 0  # the client already had bytes: no silent switch of answers


def test_access_denied_is_a_clear_403_naming_the_model(gw, bedrock, backup):
    bedrock.push(ErrorReply.access_denied())
    with pytest.raises(openai.PermissionDeniedError) as exc:
        gw.client("sk-acme").chat.completions.create(model="claude", messages=MSG)
    assert CLAUDE in exc.value.message and backup.calls == 0


def test_validation_error_is_a_400(gw, bedrock):
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client("sk-acme").chat.completions.create(model="claude", messages=[{"role": "assistant", "content": "hi"}])
    assert "start with a user message" in exc.value.message


def test_usage_and_cost_charged_once(gw, bedrock):
    usage = {"inputTokens": 1000, "outputTokens": 200, "cacheReadInputTokens": 0}
    bedrock.push(Reply(text="cheap", usage=usage), Reply(text="cheap", usage=usage))
    out = gw.client("sk-acme").chat.completions.create(model="claude", messages=MSG)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (1000, 200)
    list(gw.client("sk-acme").chat.completions.create(model="claude", messages=MSG, stream=True))
    one = (1000 * PRICE[0] + 200 * PRICE[1]) / 1e6
    s = spend(gw.url)
    assert s["requests"] == 2 and s["estimated_requests"] == 0
    assert s["spent_usd"] == pytest.approx(2 * one, abs=1e-12)


def test_a_wrong_secret_is_refused_by_the_signature_check(gw, bedrock, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-test-secret")  # read on the first request
    with pytest.raises(openai.AuthenticationError):
        gw.client("sk-acme").chat.completions.create(model="claude", messages=MSG)
    assert bedrock.signature_errors == ["signature mismatch"]


def test_messages_and_responses_surfaces_reach_bedrock(gw, bedrock):
    import anthropic

    claude = anthropic.Anthropic(api_key="sk-acme", base_url=gw.url, max_retries=0, timeout=15.0)
    msg = claude.messages.create(model="claude", max_tokens=100, system="be brief", messages=MSG)
    assert msg.content[0].text == "Mock answer to: hello there" and msg.stop_reason == "end_turn"
    with claude.messages.stream(model="claude", max_tokens=100, messages=MSG) as stream:
        assert "".join(stream.text_stream) == "Mock answer to: hello there"
    resp = gw.client("sk-acme").responses.create(model="claude", input="hello there")
    assert resp.output_text == "Mock answer to: hello there"
    assert bedrock.actions == ["converse", "converse-stream", "converse"] and bedrock.signature_errors == []
    assert bedrock.requests[0]["system"] == [{"text": "be brief"}]


def test_a_bedrock_api_key_is_sent_as_a_bearer_token_instead_of_sigv4(make_gateway, servers, aws_env):
    server = servers.call(MockBedrock(api_key="bedrock-api-key-test-0001").start())
    try:
        gw = make_gateway(textwrap.dedent(f"""\
            version: 1
            providers:
              aws: {{type: bedrock, region: us-west-2, base_url: "{server.url}", api_key: bedrock-api-key-test-0001}}
            models:
              claude: {{deployments: [{{provider: aws, model: "{CLAUDE}"}}]}}
            tenants:
              acme: {{api_keys: [sk-acme], models: "*"}}
            """))
        out = gw.client("sk-acme").chat.completions.create(model="claude", messages=MSG)
        assert out.choices[0].message.content == "Mock answer to: hello there"
        assert server.headers[-1]["authorization"] == "Bearer bedrock-api-key-test-0001"
        assert "x-amz-date" not in server.headers[-1] and server.signature_errors == []
    finally:
        servers.call(server.stop())
