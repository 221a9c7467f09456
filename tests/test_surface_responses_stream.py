"""Chat chunks -> Responses stream events, checked event by event against the openai SDK's
``ResponseStreamEvent`` types and replayed through the SDK's own accumulator
(``ResponseStreamState``), whose final response must equal the non-streamed translation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.surfaces.responses_native import NativeStreamUsage
from gateway.surfaces.responses_response import chat_to_response
from gateway.surfaces.responses_stream import ResponsesStream

EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
RESPONSE_ID, CREATED = "resp_s1", 1700000000
REQUEST: dict[str, Any] = {
    "model": "gpt-x", "input": "Weather in Paris, and the route?", "stream": True,
    "tools": [{"type": "function", "name": "get_weather", "strict": True,
               "parameters": {"type": "object", "properties": {"c": {"type": "string"}}, "required": ["c"],
                              "additionalProperties": False}},
              {"type": "namespace", "name": "mcp__maps", "description": "Maps", "tools": [
                  {"type": "function", "name": "route", "strict": True, "parameters": {
                      "type": "object", "properties": {}, "additionalProperties": False}}]}],
}
USAGE = {"prompt_tokens": 40, "completion_tokens": 25, "total_tokens": 65,
         "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 5}}


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x-2025",
            "choices": choices, "usage": usage}


def tool(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict:
    fn: dict[str, Any] = {"arguments": arguments}
    if name:
        fn["name"] = name
    return {"tool_calls": [{"index": index, **({"id": call_id, "type": "function"} if call_id else {}),
                            "function": fn}]}


def parse(frames: list[bytes]) -> list[dict]:
    """SSE frames -> event payloads, checking the framing and that the event name is the type."""
    events = []
    for frame in frames:
        head, data, rest = frame.decode().split("\n", 2)
        assert rest == "\n" and head.startswith("event: ") and data.startswith("data: ")
        event = orjson.loads(data.removeprefix("data: "))
        assert head.removeprefix("event: ") == event["type"]
        events.append(event)
    return events


def replay(events: list[dict], request: dict = REQUEST) -> tuple[list[Any], Any]:
    """Validate each event with the SDK types and accumulate them as the SDK does; returns the SDK's
    events and its final response."""
    state = ResponseStreamState(input_tools=request.get("tools") or [], text_format=omit)
    sdk_events = []
    for n, event in enumerate(events):
        assert event["sequence_number"] == n  # every event numbered, from 0, no gaps
        sdk_events.extend(state.handle_event(EVENT.validate_python(event)))
    assert sdk_events[-1].type in ("response.completed", "response.incomplete", "response.failed")
    return sdk_events, sdk_events[-1].response


def run(chunks: list[dict], request: dict = REQUEST) -> list[dict]:
    stream = ResponsesStream(RESPONSE_ID, request, CREATED)
    frames = [frame for c in chunks for frame in stream.feed(c)] + stream.close()
    assert stream.feed(chunk({"content": "late"})) == [] and stream.close() == []  # terminal means terminal
    return parse(frames)


def whole(message: dict, finish: str) -> dict:
    """The non-streamed completion the chunks of a test add up to."""
    return {"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-x-2025", "usage": USAGE,
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}]}


def _unparsed(value: Any) -> Any:
    """A dump without the ``parsed``/``parsed_arguments`` fields the SDK's accumulator adds."""
    if isinstance(value, dict):
        return {k: _unparsed(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments")}
    return [_unparsed(v) for v in value] if isinstance(value, list) else value


def same_as_unstreamed(final: Any, message: dict, finish: str) -> None:
    """The SDK's rebuilt response equals the translation of the same answer unstreamed."""
    expected = chat_to_response(whole(message, finish), response_id=RESPONSE_ID, request=REQUEST,
                                created_at=CREATED)
    assert _unparsed(final.model_dump()) == Response.model_validate(expected).model_dump()


def test_text_stream() -> None:
    events = run([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
                  chunk({}, finish="stop"), chunk(usage=USAGE)])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    item_ids = {e["item_id"] for e in events if "item_id" in e}
    assert item_ids == {"msg_s1_0"} and {e.get("output_index", 0) for e in events} == {0}
    assert events[6]["text"] == "Hello" and events[8]["item"]["status"] == "completed"
    sdk_events, final = replay(events)
    assert [e.snapshot for e in sdk_events if e.type == "response.output_text.delta"] == ["Hel", "Hello"]
    assert final.output_text == "Hello" and final.status == "completed"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (40, 25, 65)
    assert final.usage.input_tokens_details.cached_tokens == 8
    same_as_unstreamed(final, {"content": "Hello"}, "stop")


def test_reasoning_text_and_two_tool_calls_split_over_chunks() -> None:
    events = run([
        chunk({"role": "assistant", "reasoning_content": "Two "}), chunk({"reasoning_content": "lookups."}),
        chunk({"content": "Checking."}),
        chunk(tool(0, "", "call_1", "get_weather")), chunk(tool(0, "{\"c\":")), chunk(tool(0, "\"Paris\"}")),
        chunk(tool(1, "{", "call_2", "mcp__maps__route")), chunk(tool(1, "}")),
        chunk({}, finish="tool_calls"), chunk(usage=USAGE),
    ])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["id"]) for e in added] == [
        (0, "rs_s1_0"), (1, "msg_s1_1"), (2, "fc_s1_2"), (3, "fc_s1_3")]
    assert added[2]["item"]["call_id"] == "call_1" and added[2]["item"]["arguments"] == ""
    assert (added[3]["item"]["name"], added[3]["item"]["namespace"]) == ("route", "mcp__maps")
    sdk_events, final = replay(events)
    snapshots = [e.snapshot for e in sdk_events if e.type == "response.function_call_arguments.delta"]
    assert snapshots == ["{\"c\":", "{\"c\":\"Paris\"}", "{", "{}"]
    reasoning, message, weather, route = final.output
    assert reasoning.content[0].text == "Two lookups." and message.content[0].text == "Checking."
    assert weather.parsed_arguments == {"c": "Paris"}  # the SDK found the strict tool by its declared name
    assert (route.name, route.namespace, route.parsed_arguments) == ("route", "mcp__maps", {})
    same_as_unstreamed(final, {"reasoning_content": "Two lookups.", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"c\":\"Paris\"}"}},
        {"id": "call_2", "type": "function", "function": {"name": "mcp__maps__route", "arguments": "{}"}},
    ]}, "tool_calls")


def test_whole_calls_that_all_say_index_0_stay_apart() -> None:
    events = run([chunk(tool(0, "{\"c\":\"A\"}", "call_a", "get_weather")),
                  chunk(tool(0, "{\"c\":\"B\"}", "call_b", "get_weather")), chunk({}, finish="tool_calls")])
    _, final = replay(events)
    assert [(item.call_id, item.parsed_arguments) for item in final.output] == [
        ("call_a", {"c": "A"}), ("call_b", {"c": "B"})]


def test_length_cut_ends_incomplete() -> None:
    events = run([chunk({"content": "It is sun"}, finish="length", usage=USAGE)])
    assert [e["type"] for e in events][-2:] == ["response.output_item.done", "response.incomplete"]
    assert events[-2]["item"]["status"] == "incomplete"
    _, final = replay(events)
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == "It is sun"
    same_as_unstreamed(final, {"content": "It is sun"}, "length")


def test_refusal_stream() -> None:
    events = run([chunk({"refusal": "I can't "}), chunk({"refusal": "help."}, finish="stop")])
    assert [e["type"] for e in events][3:8] == [
        "response.content_part.added", "response.refusal.delta", "response.refusal.delta",
        "response.refusal.done", "response.content_part.done"]
    assert events[6]["refusal"] == "I can't help."
    _, final = replay(events)
    assert final.output[0].content[0].refusal == "I can't help." and final.usage is None


@pytest.mark.parametrize("code", ["server_error", "rate_limit_exceeded"])
def test_failure_mid_call_is_response_failed(code: str) -> None:
    stream = ResponsesStream(RESPONSE_ID, REQUEST, CREATED)
    frames = stream.feed(chunk(tool(0, "{\"c\":", "call_1", "get_weather")))
    frames += stream.fail(code, "upstream went away")
    assert stream.close() == [] and stream.fail(code, "again") == []
    events = parse(frames)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.failed"]
    _, final = replay(events)
    assert final.status == "failed" and final.error.code == code and final.error.message == "upstream went away"
    assert final.output[0].status == "incomplete" and final.output[0].arguments == "{\"c\":"


def test_empty_upstream_stream_still_completes() -> None:
    events = run([])
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]
    _, final = replay(events)
    assert final.output == [] and final.status == "completed"


def test_native_usage_reader_on_a_responses_stream() -> None:
    events = run([chunk({"content": "Checking."}), chunk(tool(0, "{\"c\":\"P\"}", "call_1", "get_weather")),
                  chunk({}, finish="tool_calls"), chunk(usage=USAGE)])
    reader = NativeStreamUsage()
    for event in events:
        reader.feed(event["type"], event)
    assert reader.generated_chars == len("Checking.") + len("{\"c\":\"P\"}")
    assert reader.usage == USAGE and reader.status == "completed"
