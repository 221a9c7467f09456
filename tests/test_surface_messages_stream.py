"""Anthropic Messages surface: chat completion chunks -> Anthropic stream events (``MessagesStream``).

Every frame is parsed and validated with the anthropic SDK's event types; the final message is
rebuilt twice, with the SDK's own accumulator and with the SDK client reading the bytes over an
in-process transport, so a broken event order or shape fails here.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from openai.types.chat import ChatCompletionChunk
from pydantic import TypeAdapter

from gateway.surfaces.anthropic_stream import MessagesStream

EVENT = TypeAdapter(RawMessageStreamEvent)
ESTIMATE = 11


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict | None = None,
          **choice: Any) -> dict[str, Any]:
    """A chat.completion.chunk; ``delta=None`` with ``usage`` is the usage-only last chunk."""
    choices = [] if delta is None and finish is None else [
        {"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None, **choice}]
    out: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x",
                           "choices": choices}
    if usage is not None:
        out["usage"] = usage
    ChatCompletionChunk.model_validate(out)  # the input is a real OpenAI chunk
    return out


def call(index: int, *, id: str | None = None, name: str | None = None, args: str | None = None) -> dict:
    fn = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    out: dict[str, Any] = {"index": index, "function": fn}
    if id:
        out.update(id=id, type="function")
    return out


def tools(*calls: dict) -> dict[str, Any]:
    return {"tool_calls": list(calls)}


USAGE = {"prompt_tokens": 140, "completion_tokens": 9, "total_tokens": 149,
         "prompt_tokens_details": {"cached_tokens": 100}}


def run(chunks: list[dict], **kw: Any) -> list[bytes]:
    stream = MessagesStream("claude-x", "msg_test", ESTIMATE, **kw)
    frames = [frame for c in chunks for frame in stream.feed(c)]
    return frames + stream.close()


def parse(frames: list[bytes]) -> list[dict[str, Any]]:
    """Each frame is exactly ``event: <name>\\ndata: <json>\\n\\n``, its name is its data's type, and the
    data validates as the SDK's event (or error) type."""
    events = []
    for raw in frames:
        assert raw.endswith(b"\n\n") and raw.count(b"\n") == 3, raw
        event_line, data_line = raw.decode().split("\n")[:2]
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = orjson.loads(data_line[len("data: "):])
        assert data["type"] == event_line[len("event: "):]
        if data["type"] == "error":
            ErrorResponse.model_validate(data)
        elif data["type"] != "ping":
            EVENT.validate_python(data)
        events.append(data)
    return events


def accumulate(events: list[dict[str, Any]]) -> dict[str, Any]:
    snapshot, bufs = None, {}
    for data in events:
        if data["type"] not in ("ping", "error"):
            snapshot = accumulate_event(event=EVENT.validate_python(data), current_snapshot=snapshot, json_bufs=bufs)
    return Message.model_validate(snapshot.model_dump()).model_dump(exclude_none=True)


def sdk_final(frames: list[bytes]) -> tuple[str, Message]:
    """What the anthropic SDK's own streaming helper makes of the bytes."""
    body = b"".join(frames)
    transport = httpx2.MockTransport(lambda request: httpx2.Response(
        200, content=body, headers={"content-type": "text/event-stream"}))
    client = anthropic.Anthropic(api_key="k", base_url="http://127.0.0.1:9", max_retries=0,
                                 http_client=httpx2.Client(transport=transport))
    with client.messages.stream(model="claude-x", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        return text, s.get_final_message()


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] if e["type"] not in ("content_block_delta",) else e["delta"]["type"] for e in events]


def test_text_stream_with_usage_only_last_chunk():
    frames = run([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
                  chunk({}, "stop"), chunk(usage=USAGE)])
    events = parse(frames)
    assert names(events) == ["message_start", "ping", "content_block_start", "text_delta", "text_delta",
                             "content_block_stop", "message_delta", "message_stop"]
    start = events[0]["message"]
    assert start["id"] == "msg_test" and start["model"] == "claude-x" and start["content"] == []
    assert start["usage"]["input_tokens"] == ESTIMATE
    assert events[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2]["usage"] == {"input_tokens": 40, "output_tokens": 9, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 100}
    final = accumulate(events)
    assert final["content"] == [{"type": "text", "text": "Hello"}]
    assert final["usage"]["input_tokens"] == 40 and final["usage"]["cache_read_input_tokens"] == 100
    text, message = sdk_final(frames)
    assert text == "Hello" and message.stop_reason == "end_turn" and message.usage.output_tokens == 9


def test_tool_calls_split_over_chunks_with_the_id_only_first():
    chunks = [
        chunk({"role": "assistant", "content": "Checking."}),
        chunk(tools(call(0, id="call_a", name="read_file", args=""))),
        chunk(tools(call(0, args='{"pa'))), chunk(tools(call(0, args='th": '))), chunk(tools(call(0, args='"a.txt"}'))),
        chunk(tools(call(1, id="call_b", name="grep", args='{"pattern": "TODO",'))),
        chunk(tools(call(1, args=' "path": "src"}'))),
        chunk({}, "tool_calls"),
        chunk(usage=USAGE),
    ]
    events = parse(run(chunks))
    starts = [(e["index"], e["content_block"]["type"]) for e in events if e["type"] == "content_block_start"]
    assert starts == [(0, "text"), (1, "tool_use"), (2, "tool_use")]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert stops == [0, 1, 2]
    # every delta targets the block that is open at that moment
    open_index = None
    for e in events:
        if e["type"] == "content_block_start":
            open_index = e["index"]
        elif e["type"] == "content_block_delta":
            assert e["index"] == open_index
    final = accumulate(events)
    assert final["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_a", "name": "read_file", "input": {"path": "a.txt"}},
        {"type": "tool_use", "id": "call_b", "name": "grep", "input": {"pattern": "TODO", "path": "src"}},
    ]
    assert final["stop_reason"] == "tool_use"
    _, message = sdk_final(run(chunks))
    assert [b.input for b in message.content if b.type == "tool_use"] == [
        {"path": "a.txt"}, {"pattern": "TODO", "path": "src"}]


def test_reasoning_then_text_becomes_thinking_then_text_blocks():
    chunks = [chunk({"role": "assistant", "reasoning_content": "Six "}), chunk({"reasoning_content": "times seven."}),
              chunk({"content": "42"}), chunk({}, "stop"), chunk(usage=USAGE)]
    events = parse(run(chunks))
    assert names(events)[2:9] == ["content_block_start", "thinking_delta", "thinking_delta", "content_block_stop",
                                  "content_block_start", "text_delta", "content_block_stop"]
    final = accumulate(events)
    assert final["content"] == [{"type": "thinking", "thinking": "Six times seven.", "signature": ""},
                                {"type": "text", "text": "42"}]
    text, message = sdk_final(run(chunks))
    assert text == "42" and message.content[0].thinking == "Six times seven."


def test_reasoning_field_name_used_by_newer_vllm_also_works():
    events = parse(run([chunk({"reasoning": "hmm"}), chunk({"content": "ok"}), chunk({}, "stop")]))
    assert [b["type"] for b in accumulate(events)["content"]] == ["thinking", "text"]


def test_without_usage_the_output_is_estimated_and_the_input_estimate_stays():
    events = parse(run([chunk({"content": "x" * 10}), chunk({}, "stop")]))
    assert events[-2]["usage"] == {"output_tokens": 3}
    final = accumulate(events)
    assert final["usage"]["input_tokens"] == ESTIMATE and final["usage"]["output_tokens"] == 3


def test_tool_name_arriving_after_arguments_is_held_until_known():
    chunks = [chunk(tools(call(0, id="call_x", args='{"a":'))), chunk(tools(call(0, name="calc", args=" 1}"))),
              chunk({}, "tool_calls")]
    events = parse(run(chunks))
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert len(starts) == 1 and starts[0]["content_block"]["name"] == "calc"
    assert starts[0]["content_block"]["id"] == "call_x"
    assert accumulate(events)["content"][0]["input"] == {"a": 1}


def test_a_tool_call_that_already_ended_cannot_reopen_and_text_after_tools_is_a_new_block():
    chunks = [chunk(tools(call(0, id="c0", name="f", args='{"x": 1}'))),
              chunk(tools(call(1, id="c1", name="g", args="{}"))),
              chunk(tools(call(0, args='garbage'))),
              chunk({"content": "done"}), chunk({}, "stop")]
    final = accumulate(parse(run(chunks)))
    assert [(b["type"], b.get("input")) for b in final["content"]] == [
        ("tool_use", {"x": 1}), ("tool_use", {}), ("text", None)]
    assert final["stop_reason"] == "tool_use"  # a tool-calling turn that ended with "stop"


@pytest.mark.parametrize(("finish", "extra", "stops", "expected"), [
    ("length", {}, (), ("max_tokens", None)),
    ("stop", {"stop_reason": "###"}, ("###",), ("stop_sequence", "###")),
    ("stop", {}, ("###",), ("end_turn", None)),
    ("content_filter", {}, (), ("refusal", None)),
])
def test_stop_reasons(finish, extra, stops, expected):
    events = parse(run([chunk({"content": "a"}), chunk({}, finish, **extra)], stop_sequences=stops))
    assert (events[-2]["delta"]["stop_reason"], events[-2]["delta"]["stop_sequence"]) == expected


def test_refusal_delta_is_text_with_refusal_stop():
    final = accumulate(parse(run([chunk({"refusal": "No."}), chunk({}, "stop")])))
    assert final["content"] == [{"type": "text", "text": "No."}] and final["stop_reason"] == "refusal"


def test_start_close_and_feed_are_idempotent_where_they_must_be():
    stream = MessagesStream("claude-x", "msg_test", ESTIMATE)
    head = stream.start()
    assert [e["type"] for e in parse(head)] == ["message_start", "ping"]
    assert stream.start() == []
    body = stream.feed(chunk({"content": "a"}))
    assert [e["type"] for e in parse(body)] == ["content_block_start", "content_block_delta"]
    tail = stream.close()
    assert [e["type"] for e in parse(tail)] == ["content_block_stop", "message_delta", "message_stop"]
    assert stream.close() == [] and stream.feed(chunk({"content": "late"})) == []
    assert parse([stream.ping()]) == [{"type": "ping"}]


def test_an_empty_stream_is_still_a_whole_message():
    frames = MessagesStream("claude-x", "msg_test", ESTIMATE).close()
    assert [e["type"] for e in parse(frames)] == ["message_start", "ping", "message_delta", "message_stop"]
    _, message = sdk_final(frames)
    assert message.content == [] and message.stop_reason == "end_turn"


def test_fail_sends_an_error_event_and_ends_the_stream():
    stream = MessagesStream("claude-x", "msg_test", ESTIMATE)
    stream.feed(chunk({"content": "partial"}))
    error = parse([stream.fail("overloaded_error", "upstream went away")])[0]
    assert error == {"type": "error", "error": {"type": "overloaded_error", "message": "upstream went away"}}
    assert stream.close() == [] and stream.feed(chunk({"content": "x"})) == []


def test_the_sdk_raises_the_error_event():
    stream = MessagesStream("claude-x", "msg_test", ESTIMATE)
    frames = stream.feed(chunk({"content": "partial"})) + [stream.fail("overloaded_error", "busy")]
    with pytest.raises(anthropic.APIStatusError, match="busy"):
        sdk_final(frames)
