"""The Responses mock speaks the real wire format: the official ``openai`` SDK drives it, and every
object and stream event it sends validates strictly against the SDK's own pydantic types."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pydantic
import pytest
import pytest_asyncio
from openai.types.responses import Response, ResponseStreamEvent

from tests.support.mock_responses import Fault, MockResponses

pytestmark = pytest.mark.timeout(30)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}
EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)


@pytest_asyncio.fixture
async def mock() -> AsyncIterator[MockResponses]:
    async with MockResponses() as server:
        yield server


@pytest_asyncio.fixture
async def client(mock: MockResponses) -> AsyncIterator[openai.AsyncOpenAI]:
    async with client_for(mock) as sdk:
        yield sdk


def client_for(server: MockResponses, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url, api_key="sk-test", max_retries=0, **kw)


async def raw_events(server: MockResponses, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streaming request and return the decoded ``data:`` payloads, checking each ``event:`` line."""
    async with aiohttp.ClientSession() as session, session.post(f"{server.url}/responses", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = await resp.text()
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    return events


async def test_text_non_stream(mock: MockResponses, client: openai.AsyncOpenAI) -> None:
    resp = await client.responses.create(model="gpt-test", input="hello there", instructions="Be brief.",
                                         store=False)
    assert resp.output_text == "Echo: hello there"
    assert resp.status == "completed" and resp.output[0].type == "message"
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (4, 3, 7)
    Response.model_validate(resp.model_dump())  # strict: every required field present and well-typed
    assert mock.requests[0] == {"model": "gpt-test", "input": "hello there",
                                          "instructions": "Be brief.", "store": False}
    assert mock.headers[0]["authorization"] == "Bearer sk-test"
    assert mock.paths == ["/v1/responses"]


async def test_text_stream_with_sdk_helper(mock: MockResponses, client: openai.AsyncOpenAI) -> None:
    types, deltas = [], []
    async with client.responses.stream(model="gpt-test", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "stream me please"}]},
    ]) as stream:
        async for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()
    assert final.output_text == "Echo: stream me please" == "".join(deltas)
    assert len(deltas) > 1
    body_types = [t for t in types if t != "response.output_text.delta"]
    assert body_types == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]
    assert types.index("response.output_text.delta") == 4
    assert mock.completed_streams == 1


async def test_raw_stream_events_validate_strictly(mock: MockResponses) -> None:
    for tools in ([], [WEATHER]):
        events = await raw_events(mock, {"model": "gpt-test", "input": "hi", "stream": True,
                                                   "tools": tools})
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        for event in events:
            EVENTS.validate_python(event)
        assert events[-1]["type"] == "response.completed"
        Response.model_validate(events[-1]["response"])
        assert events[-1]["response"]["id"] == events[0]["response"]["id"]


async def test_function_call_then_output(mock: MockResponses, client: openai.AsyncOpenAI) -> None:
    first = await client.responses.create(model="gpt-test", input="weather in Paris?", tools=[WEATHER])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "mock", "days": 1}
    assert first.output_text == ""

    follow = [
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"},
    ]
    second = await client.responses.create(model="gpt-test", input=follow, tools=[WEATHER])
    assert second.output_text == "Tool output: sunny, 21C"
    assert mock.requests[1]["input"][2]["type"] == "function_call_output"


async def test_function_call_streamed(mock: MockResponses, client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(model="gpt-test", input="weather?", tools=[WEATHER], stream=True)
    deltas, done, added = [], None, None
    async for event in stream:
        if event.type == "response.output_item.added":
            added = event.item
        elif event.type == "response.function_call_arguments.delta":
            deltas.append(event.delta)
        elif event.type == "response.function_call_arguments.done":
            done = event.arguments
        elif event.type == "response.completed":
            final = event.response
    assert added is not None and added.type == "function_call" and added.arguments == ""
    assert "".join(deltas) == done == final.output[0].arguments
    assert json.loads(done) == {"city": "mock", "days": 1}

    async with client.responses.stream(model="gpt-test", input="weather?", tools=[WEATHER]) as helper:
        parsed = await helper.get_final_response()
    assert parsed.output[0].type == "function_call" and parsed.output[0].name == "get_weather"


async def test_scripted_content_and_max_output_tokens(mock: MockResponses, client: openai.AsyncOpenAI) -> None:
    mock.push(Fault(text="scripted words here"), Fault(call=("lookup", {"q": "x"})))
    assert (await client.responses.create(model="m", input="a", tools=[WEATHER])).output_text == (
        "scripted words here")
    called = (await client.responses.create(model="m", input="a")).output[0]
    assert called.type == "function_call" and called.name == "lookup"
    short = await client.responses.create(model="m", input="one two three four", max_output_tokens=2)
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"
    assert short.output_text == "Echo: one"
    events = await raw_events(mock, {"model": "m", "input": "one two three", "max_output_tokens": 1,
                                               "stream": True})
    assert events[-1]["type"] == "response.incomplete"
    EVENTS.validate_python(events[-1])


async def test_injected_status_errors(mock: MockResponses, client: openai.AsyncOpenAI) -> None:
    mock.push(Fault(status=500), Fault(status=429, error_type="requests", error_code="rate_limit_exceeded",
                                                 headers={"retry-after": "3"}))
    with pytest.raises(openai.InternalServerError) as err:
        await client.responses.create(model="gpt-test", input="hi")
    assert err.value.status_code == 500
    assert err.value.body == {"message": "responses says 500", "type": "server_error", "param": None, "code": None}
    with pytest.raises(openai.RateLimitError) as limited:
        await client.responses.create(model="gpt-test", input="hi", stream=True)
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "3"
    assert (await client.responses.create(model="gpt-test", input="ok")).output_text == "Echo: ok"
    with pytest.raises(openai.BadRequestError, match="model"):
        await client.responses.create(model="", input="hi")


async def test_api_key_check() -> None:
    async with MockResponses(api_key="sk-right") as server:
        async with client_for(server) as wrong:
            with pytest.raises(openai.AuthenticationError):
                await wrong.responses.create(model="m", input="hi")
        async with openai.AsyncOpenAI(base_url=server.url, api_key="sk-right", max_retries=0) as right:
            assert (await right.responses.create(model="m", input="hi")).output_text == "Echo: hi"


async def test_cut_stream_and_error_event(mock: MockResponses, client: openai.AsyncOpenAI) -> None:
    mock.push(Fault(cut_after=4), Fault(error_after=3))
    seen = []
    with pytest.raises(openai.APIConnectionError):
        async for event in await client.responses.create(model="m", input="cut me", stream=True):
            seen.append(event.type)
    assert seen == ["response.created", "response.in_progress", "response.output_item.added",
                    "response.content_part.added"]

    events = [e async for e in await client.responses.create(model="m", input="fail me", stream=True)]
    assert [e.type for e in events[-2:]] == ["response.output_item.added", "error"]
    assert events[-1].message == "responses: stream failed" and events[-1].code == "server_error"
    assert mock.calls == 2


async def test_hang_and_reset(mock: MockResponses) -> None:
    mock.push(Fault(hang=True), Fault(reset=True))
    async with client_for(mock, timeout=0.5) as impatient:
        with pytest.raises(openai.APITimeoutError):
            await impatient.responses.create(model="m", input="hi")
        with pytest.raises(openai.APIConnectionError):
            await impatient.responses.create(model="m", input="hi")
    assert mock.calls == 2
