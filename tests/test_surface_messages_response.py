"""Anthropic Messages surface: whole responses (chat -> Message), errors in Anthropic's shape,
count_tokens, and the usage helpers of the native (untranslated) path. Pure functions, no server.

Outputs are validated with the anthropic SDK's types, inputs with the openai SDK's, and errors are
read back by the anthropic SDK client over an in-process transport.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from anthropic.types import Message, MessageTokensCount
from anthropic.types.shared import ErrorResponse
from openai.types.chat import ChatCompletion

from gateway.errors import GatewayError
from gateway.surfaces.anthropic_errors import anthropic_error, count_tokens_estimate, from_gateway_error
from gateway.surfaces.anthropic_native import NativeStreamUsage, chat_usage, usage_of_message
from gateway.surfaces.anthropic_response import chat_to_message

READ_TOOL = {"name": "read_file", "description": "Read a file",
             "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}


# --- response -------------------------------------------------------------------------------------
def completion(message: dict[str, Any], finish: str | None = "stop", usage: dict | None = None,
               **choice: Any) -> dict[str, Any]:
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish,
                         "logprobs": None, **choice}],
            "usage": usage or {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}}
    if finish is not None:
        ChatCompletion.model_validate(chat)  # the input is a real chat completion
    return chat


def as_message(chat: dict[str, Any], **kw: Any) -> dict[str, Any]:
    out = chat_to_message(chat, "claude-x", **kw)
    Message.model_validate(out)
    return out


def test_text_answer_and_cached_usage():
    usage = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
             "prompt_tokens_details": {"cached_tokens": 100}}
    out = as_message(completion({"content": "Hello!"}, usage=usage), message_id="msg_fixed")
    assert out == {"id": "msg_fixed", "type": "message", "role": "assistant", "model": "claude-x",
                   "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": 20, "output_tokens": 30, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 100}}
    assert as_message(completion({"content": "x"}))["id"].startswith("msg_")


def test_tool_calls_become_tool_use_blocks():
    calls = [{"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "read_file", "arguments": '{"path": '}}]
    out = as_message(completion({"content": "Let me look.", "tool_calls": calls}, "tool_calls"))
    assert out["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_1", "name": "read_file", "input": {"path": "a"}},
        {"type": "tool_use", "id": "call_2", "name": "read_file", "input": {}},  # broken JSON: documented {}
    ]
    assert out["stop_reason"] == "tool_use"


def test_tool_calls_ending_with_stop_still_say_tool_use():
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert as_message(completion({"content": None, "tool_calls": calls}, "stop"))["stop_reason"] == "tool_use"


def test_reasoning_content_becomes_a_leading_thinking_block():
    out = as_message(completion({"content": "42", "reasoning_content": "6 times 7"}))
    assert out["content"] == [{"type": "thinking", "thinking": "6 times 7", "signature": ""},
                              {"type": "text", "text": "42"}]


@pytest.mark.parametrize(("finish", "extra", "stops", "expected"), [
    ("length", {}, (), ("max_tokens", None)),
    ("content_filter", {}, (), ("refusal", None)),
    ("stop", {"stop_reason": "END"}, ("END",), ("stop_sequence", "END")),  # vLLM names the matched stop
    ("stop", {"stop_reason": "END"}, ("OTHER",), ("end_turn", None)),
    ("stop", {"stop_reason": 128001}, ("END",), ("end_turn", None)),  # a stop token id, not a sequence
])
def test_stop_reasons(finish, extra, stops, expected):
    out = as_message(completion({"content": "x"}, finish, **extra), stop_sequences=stops)
    assert (out["stop_reason"], out["stop_sequence"]) == expected


def test_refusal_is_text_with_refusal_stop():
    out = as_message(completion({"content": None, "refusal": "I can't help with that."}))
    assert out["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert out["stop_reason"] == "refusal"


def test_empty_answer_is_still_a_valid_message():
    out = as_message({"id": "x", "choices": [], "usage": None})
    assert out["content"] == [] and out["stop_reason"] == "end_turn"
    assert out["usage"]["input_tokens"] == 0


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "code", "out_status", "kind"), [
    (400, "invalid_value", 400, "invalid_request_error"),
    (401, "invalid_api_key", 401, "authentication_error"),
    (403, None, 403, "permission_error"),
    (404, "model_not_found", 404, "not_found_error"),
    (429, "rate_limit_exceeded", 429, "rate_limit_error"),
    (500, "internal_error", 500, "api_error"),
    (502, "upstream_error", 502, "api_error"),
    (503, "upstream_unavailable", 529, "overloaded_error"),
    (503, "state_unavailable", 503, "api_error"),
    (504, None, 504, "timeout_error"),
])
def test_error_bodies_parse_as_anthropic_errors(status, code, out_status, kind):
    got_status, body = anthropic_error(status, "what went wrong", code)
    assert got_status == out_status
    parsed = ErrorResponse.model_validate(orjson.loads(body))
    assert parsed.type == "error" and parsed.error.type == kind and parsed.error.message == "what went wrong"


def test_413_uses_anthropic_request_too_large_and_request_id_is_carried():
    status, body = anthropic_error(413, "too big", "request_too_large", request_id="req_1")
    assert status == 413
    assert orjson.loads(body) == {"type": "error", "error": {"type": "request_too_large", "message": "too big"},
                                  "request_id": "req_1"}


def _sdk_error(status: int, body: bytes) -> Exception:
    transport = httpx2.MockTransport(lambda request: httpx2.Response(status, content=body,
                                                                   headers={"content-type": "application/json"}))
    client = anthropic.Anthropic(api_key="k", base_url="http://127.0.0.1:9", max_retries=0,
                                 http_client=httpx2.Client(transport=transport))
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    return caught.value


def test_the_sdk_sees_exhausted_upstreams_as_overloaded():
    err = GatewayError(503, "Every upstream deployment of model 'm' failed.", code="upstream_unavailable")
    caught = _sdk_error(*from_gateway_error(err))
    assert isinstance(caught, anthropic.OverloadedError)
    assert caught.body["error"]["type"] == "overloaded_error"
    assert isinstance(_sdk_error(*anthropic_error(429, "slow down", "rate_limit_exceeded")), anthropic.RateLimitError)


# --- count_tokens ---------------------------------------------------------------------------------
def test_count_tokens_is_deterministic_and_counts_system_tools_and_images():
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    plain = count_tokens_estimate(body)
    assert plain == 100 + 4 and count_tokens_estimate(body) == plain
    MessageTokensCount.model_validate({"input_tokens": plain})
    assert count_tokens_estimate({**body, "system": "y" * 40}) == plain + 10
    assert count_tokens_estimate({**body, "tools": [READ_TOOL]}) > plain + 20
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 100_000}}
    with_image = {"model": "m", "messages": [{"role": "user", "content": [image, {"type": "text", "text": "x" * 400}]}]}
    assert count_tokens_estimate(with_image) == plain + 765


def test_count_tokens_counts_tool_traffic_and_never_raises():
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": "z" * 80}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "r" * 80}]}
    body = {"messages": [{"role": "assistant", "content": [tool_use]}, {"role": "user", "content": [result]}]}
    assert count_tokens_estimate(body) >= 40 + 8
    assert count_tokens_estimate({"messages": "junk", "system": 3, "tools": "x"}) == 1


# --- native path ----------------------------------------------------------------------------------
def test_usage_of_message_and_chat_usage():
    msg = Message.model_validate({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 300,
                  "cache_creation_input_tokens": 40}}).model_dump()
    usage = usage_of_message(msg)
    assert usage == {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 300,
                     "cache_creation_input_tokens": 40}
    assert chat_usage(usage) == {"prompt_tokens": 352, "completion_tokens": 5, "total_tokens": 357,
                                 "prompt_tokens_details": {"cached_tokens": 300}}
    assert usage_of_message({"usage": None})["input_tokens"] == 0


NATIVE_EVENTS = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1, "cache_creation_input_tokens": 10,
                  "cache_read_input_tokens": 2000}}}),
    ("ping", {"type": "ping"}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "thinking_delta", "thinking": "abcd"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "signature_delta", "signature": "s" * 50}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "text_delta", "text": "Hello"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": '{"a": 1}'}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"output_tokens": 57}}),
    ("message_stop", {"type": "message_stop"}),
]


def test_native_stream_usage_reads_start_and_delta():
    tracker = NativeStreamUsage()
    for event, data in NATIVE_EVENTS:
        tracker.feed(event, data)
    assert tracker.usage() == {"input_tokens": 25, "output_tokens": 57, "cache_read_input_tokens": 2000,
                               "cache_creation_input_tokens": 10}
    assert tracker.stop_reason == "tool_use"
    assert tracker.chars == len("abcd") + len("Hello") + len('{"a": 1}')  # signatures are not generated text


def test_native_stream_cut_before_message_delta_estimates_output():
    tracker = NativeStreamUsage()
    for event, data in NATIVE_EVENTS[:8]:
        tracker.feed(event, data)
    usage = tracker.usage()
    assert usage["input_tokens"] == 25 and usage["cache_read_input_tokens"] == 2000
    assert usage["output_tokens"] == 3  # ceil(9 chars / 4)
    assert tracker.stop_reason is None
