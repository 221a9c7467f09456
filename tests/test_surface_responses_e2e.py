"""``/v1/responses`` end to end with the official ``openai`` SDK, through the gateway to an
OpenAI-compatible deployment (``gpt``) and to an Anthropic one (``sonnet``), both on loopback mocks;
stored responses and ``previous_response_id`` across two replicas sharing one real Redis."""

from __future__ import annotations

import json
import textwrap

import openai
import pytest
from pydantic import BaseModel

from tests.support.mock_anthropic import MockAnthropic, Reply
from tests.support.mock_openai import Fault
from tests.support.ratelimit import redis_state
from tests.support.scripted_openai import Said, ScriptedOpenAI

TIMEOUTS = "{connect_s: 1, first_byte_s: 2, total_s: 10}"
TARGETS = ["gpt", "sonnet"]
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city", "strict": True,
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                               "additionalProperties": False}}


class Weather(BaseModel):
    city: str
    celsius: int


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}},
                  "required": ["city", "celsius"], "additionalProperties": False}




def policy(oai: ScriptedOpenAI, claude: MockAnthropic, state: str = "backend: memory",
           backup: ScriptedOpenAI | None = None) -> str:
    """``gpt`` and ``sonnet``; with ``backup``, also ``duo``: primary first, then the backup."""
    text = textwrap.dedent(f"""\
        version: 1
        providers:
          primary: {{type: openai, base_url: "{oai.url}", api_key: sk-primary, timeouts: {TIMEOUTS}}}
          claude: {{type: anthropic, base_url: "{claude.url}", api_key: {claude.api_key}, timeouts: {TIMEOUTS}}}
        models:
          gpt:
            context_window: 100000
            deployments: [{{provider: primary, model: gpt-up}}]
          sonnet:
            context_window: 200000
            deployments: [{{provider: claude, model: claude-sonnet-4-5}}]
        retry: {{attempts: 1, backoff_ms: 0}}
        cache: {{enabled: false}}
        tenants:
          acme: {{api_keys: [sk-acme], models: "*"}}
          beta: {{api_keys: [sk-beta], models: "*"}}
        """) + f"state:\n  {state}\n"
    if backup is not None:
        text = text.replace("\nmodels:\n", f"""
  backup: {{type: openai, base_url: "{backup.url}", api_key: sk-b, timeouts: {TIMEOUTS}}}
models:
  duo:
    deployments: [{{provider: primary, model: m-primary}}, {{provider: backup, model: m-backup}}]
""", 1)
    return text


@pytest.fixture
def gw(make_gateway, oai, claude):
    return make_gateway(policy(oai, claude))


def echo(model: str, text: str) -> str:
    """What each mock answers unscripted."""
    return f"Echo: {text}" if model == "gpt" else f"Mock answer to: {text}"


def say(model: str, oai: ScriptedOpenAI, claude: MockAnthropic, *answers: str | tuple[str, dict]) -> None:
    """Script the deployment behind ``model``: text answers, or (function name, arguments) calls."""
    for answer in answers:
        if model == "gpt":
            oai.say(Said(text=answer) if isinstance(answer, str) else Said(calls=[answer]))
        else:
            claude.push(Reply(text=answer) if isinstance(answer, str) else Reply(tool_calls=[answer]))


@pytest.mark.parametrize("model", TARGETS)
def test_create(gw, oai, claude, model):
    resp = gw.client("sk-acme").responses.create(model=model, input="hello there", instructions="be brief")
    assert resp.object == "response" and resp.id.startswith("resp_") and resp.status == "completed"
    assert resp.output_text == echo(model, "hello there")
    assert resp.output[0].type == "message" and resp.output[0].role == "assistant"
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    if model == "gpt":
        assert oai.requests[-1]["messages"][0] == {"role": "system", "content": "be brief"}
    else:
        assert claude.requests[-1]["system"] == "be brief"


@pytest.mark.parametrize("model", TARGETS)
def test_stream_final_response(gw, model):
    kinds: list[str] = []
    numbers: list[int] = []
    with gw.client("sk-acme").responses.stream(model=model, input="hello there") as stream:
        for event in stream:
            kinds.append(event.type)
            numbers.append(event.sequence_number)
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") > 1
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert final.status == "completed" and final.output_text == echo(model, "hello there")


def test_retrieve_and_delete(gw):
    client = gw.client("sk-acme")
    made = client.responses.create(model="gpt", input="remember me")
    got = client.responses.retrieve(made.id)
    assert got.id == made.id and got.output_text == "Echo: remember me"
    assert client.responses.delete(made.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(made.id)


def test_streamed_responses_are_stored_too(gw):
    client = gw.client("sk-acme")
    with client.responses.stream(model="sonnet", input="kept") as stream:
        final = stream.get_final_response()
    assert client.responses.retrieve(final.id).output_text == "Mock answer to: kept"


def test_another_tenant_cannot_retrieve_or_continue(gw):
    made = gw.client("sk-acme").responses.create(model="gpt", input="mine")
    other = gw.client("sk-beta")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(made.id)
    with pytest.raises(openai.BadRequestError):
        other.responses.create(model="gpt", input="and?", previous_response_id=made.id)
    assert gw.client("sk-acme").responses.retrieve(made.id).output_text == "Echo: mine"  # still there


def test_store_false_is_not_retrievable(gw):
    client = gw.client("sk-acme")
    made = client.responses.create(model="gpt", input="forget me", store=False)
    assert made.output_text == "Echo: forget me"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_unknown_previous_response_id_is_400(gw, oai):
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client("sk-acme").responses.create(model="gpt", input="go on", previous_response_id="resp_nope")
    assert exc.value.status_code == 400 and exc.value.code == "previous_response_not_found"
    assert exc.value.param == "previous_response_id"
    assert oai.calls == 0


@pytest.mark.parametrize("model", TARGETS)
def test_function_call_round_trip_across_replicas(make_gateway, oai, claude, redis_url, model):
    text = policy(oai, claude, redis_state(redis_url, timeout_ms=2000))
    first_gw, second_gw = make_gateway(text, name="a.yaml"), make_gateway(text, name="b.yaml")
    say(model, oai, claude, ("get_weather", {"city": "Paris"}), "It is 18C in Paris.")
    first = first_gw.client("sk-acme").responses.create(model=model, input="Weather in Paris?",
                                                        tools=[WEATHER_TOOL])
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "18C, sunny"}
    second = second_gw.client("sk-acme").responses.create(model=model, input=[output], tools=[WEATHER_TOOL],
                                                          previous_response_id=first.id)
    assert second.output_text == "It is 18C in Paris." and second.previous_response_id == first.id
    if model == "gpt":
        sent = oai.requests[-1]["messages"]
        assert sent[0] == {"role": "user", "content": "Weather in Paris?"}
        assert sent[1]["tool_calls"][0]["id"] == call.call_id
        assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "18C, sunny"}
    else:
        sent = claude.requests[-1]["messages"]
        assert sent[0]["content"] == [{"type": "text", "text": "Weather in Paris?"}]
        assert sent[1]["content"][-1] == {"type": "tool_use", "id": call.call_id, "name": "get_weather",
                                         "input": {"city": "Paris"}}
        assert sent[2]["content"][0]["tool_use_id"] == call.call_id
    assert second_gw.client("sk-acme").responses.retrieve(first.id).id == first.id  # stored in Redis


@pytest.mark.parametrize("model", TARGETS)
def test_json_schema_text_format(gw, oai, claude, model):
    say(model, oai, claude, '{"city": "Paris", "celsius": 18}')
    parsed = gw.client("sk-acme").responses.parse(model=model, input="Weather in Paris as JSON",
                                                  text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris", celsius=18)
    if model == "gpt":
        fmt = oai.requests[-1]["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Weather"
        assert fmt["json_schema"]["schema"]["required"] == ["city", "celsius"]
    else:
        fmt = claude.requests[-1]["output_config"]["format"]
        assert fmt["type"] == "json_schema" and fmt["schema"]["required"] == ["city", "celsius"]


def test_json_schema_text_format_by_hand(gw, oai):
    say("gpt", oai, None, '{"city": "Oslo", "celsius": -3}')  # type: ignore[arg-type]
    fmt = {"type": "json_schema", "name": "weather", "schema": WEATHER_SCHEMA, "strict": True}
    resp = gw.client("sk-acme").responses.create(model="gpt", input="Oslo?", text={"format": fmt})
    assert json.loads(resp.output_text) == {"city": "Oslo", "celsius": -3}
    assert resp.text.format.type == "json_schema" and resp.text.format.name == "weather"
    assert oai.requests[-1]["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "weather", "schema": WEATHER_SCHEMA, "strict": True}}


@pytest.fixture
def oai_backup(servers):
    mock = servers.call(ScriptedOpenAI("backup").start())
    yield mock
    servers.call(mock.stop())


def test_stream_fails_over_before_the_first_byte(make_gateway, oai, oai_backup, claude):
    gw = make_gateway(policy(oai, claude, backup=oai_backup))
    oai.push(Fault(500))
    with gw.client("sk-acme").responses.stream(model="duo", input="hello there") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Echo: hello there" and final.status == "completed"
    assert (oai.calls, oai_backup.calls) == (1, 1) and oai_backup.requests[0]["model"] == "m-backup"


@pytest.mark.parametrize("model", TARGETS)
def test_stream_cut_after_the_first_byte_ends_in_response_failed(gw, oai, claude, model):
    if model == "gpt":
        oai.push(Fault(cut_after=3))
    else:
        claude.push(Reply(cut_after=6))
    stream = gw.client("sk-acme").responses.create(model=model, input="tell me a long story", stream=True)
    events = [event.type for event in stream]
    assert "response.output_text.delta" in events, "the answer had started before the cut"
    assert events[-1] == "response.failed" and "response.completed" not in events
