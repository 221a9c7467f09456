"""Anthropic Messages surface: request translation (Messages -> chat), whole responses (chat ->
Message), errors, count_tokens and the native-path usage helpers. Pure functions, no server.

Inputs are checked against the ``anthropic`` SDK's request types and outputs against the ``openai``
SDK's chat request types (and the reverse for responses), so a shape error fails here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from anthropic.types import Message, MessageTokensCount
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.shared import ErrorResponse
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from gateway.errors import GatewayError
from gateway.surfaces.anthropic_errors import anthropic_error, count_tokens_estimate, from_gateway_error
from gateway.surfaces.anthropic_native import NativeStreamUsage, chat_usage, usage_of_message
from gateway.surfaces.anthropic_request import messages_to_chat
from gateway.surfaces.anthropic_response import chat_to_message

ANTHROPIC_REQUEST = TypeAdapter(MessageCreateParamsNonStreaming)
CHAT_REQUEST = TypeAdapter(CompletionCreateParamsNonStreaming)
PNG = "iVBORw0KGgo="


def _force(value: Any) -> Any:
    """Pydantic validates TypedDict ``Iterable`` fields lazily: walk them so every item is checked."""
    if isinstance(value, dict):
        return {k: _force(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_force(v) for v in value]
    if isinstance(value, Iterator):
        return [_force(v) for v in value]
    return value


def translate(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Translate a body that the anthropic SDK accepts, and check the result is a valid chat request."""
    _force(ANTHROPIC_REQUEST.validate_python(body))
    chat, dropped = messages_to_chat(body)
    _force(CHAT_REQUEST.validate_python({k: v for k, v in chat.items() if k not in ("stream", "stream_options")}))
    return chat, dropped


def base(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 256, "messages": [{"role": "user", "content": "hi"}], **fields}


# --- request: plain fields ------------------------------------------------------------------------
def test_plain_fields_translate_one_to_one():
    chat, dropped = translate(base(system="Be brief.", temperature=0.2, top_p=0.9, stop_sequences=["END", "##"],
                                   metadata={"user_id": "u-42"}))
    assert chat == {
        "model": "claude-x", "max_tokens": 256,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "temperature": 0.2, "top_p": 0.9, "stop": ["END", "##"], "user": "u-42",
    }
    assert dropped == []


def test_stream_asks_for_the_usage_chunk():
    chat, _ = messages_to_chat(base(stream=True))
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert "stream" not in messages_to_chat(base(stream=False))[0]


def test_system_blocks_join_and_cache_control_is_named_once():
    system = [{"type": "text", "text": "You are Claude Code."},
              {"type": "text", "text": "Project rules.", "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "go", "cache_control": {"type": "ephemeral"}}]}]
    chat, dropped = translate(base(system=system, messages=messages))
    assert chat["messages"][0] == {"role": "system", "content": "You are Claude Code.\n\nProject rules."}
    assert chat["messages"][1] == {"role": "user", "content": "go"}
    assert dropped == ["cache_control"]


def test_images_become_image_url_parts_in_order():
    content = [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
    ]
    chat, dropped = translate(base(messages=[{"role": "user", "content": content}]))
    assert chat["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]
    assert dropped == ["image.file_source"]


def test_documents_text_and_pdf():
    content = [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
        {"type": "document", "title": "spec.pdf",
         "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
    ]
    chat, dropped = translate(base(messages=[{"role": "user", "content": content}]))
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "notes"},
        {"type": "file", "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
    ]
    assert dropped == ["document.url_source"]


# --- request: tools -------------------------------------------------------------------------------
READ_TOOL = {"name": "read_file", "description": "Read a file",
             "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}


def tool_conversation() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Read a.txt and b.txt"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "two reads", "signature": "sig"},
            {"type": "text", "text": "Reading both."},
            {"type": "tool_use", "id": "toolu_a", "name": "read_file", "input": {"path": "a.txt"}},
            {"type": "tool_use", "id": "toolu_b", "name": "read_file", "input": {"path": "b.txt"}},
        ]},
        {"role": "user", "content": [
            {"type": "text", "text": "and summarize"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": [{"type": "text", "text": "B body"}]},
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "no such file", "is_error": True},
        ]},
    ]


def test_tool_round_trip_keeps_chat_order():
    chat, dropped = translate(base(messages=tool_conversation(), tools=[READ_TOOL]))
    user, assistant, result_b, result_a, text = chat["messages"]
    assert user == {"role": "user", "content": "Read a.txt and b.txt"}
    assert assistant["role"] == "assistant" and assistant["content"] == "Reading both."
    calls = assistant["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("toolu_a", "function", "read_file"), ("toolu_b", "function", "read_file")]
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [{"path": "a.txt"}, {"path": "b.txt"}]
    # tool messages come right after the assistant turn, in block order, before the turn's own text
    assert result_b == {"role": "tool", "tool_call_id": "toolu_b", "content": "B body"}
    assert result_a == {"role": "tool", "tool_call_id": "toolu_a", "content": "Error: no such file"}
    assert text == {"role": "user", "content": "and summarize"}
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "read_file", "description": "Read a file", "parameters": READ_TOOL["input_schema"]}}]
    assert dropped == ["thinking_blocks"]


def test_tool_result_images_move_to_the_following_user_message():
    messages = tool_conversation()[:2] + [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": [
            {"type": "text", "text": "screenshot:"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}}]},
        {"type": "tool_result", "tool_use_id": "toolu_b"},
    ]}]
    chat, _ = translate(base(messages=messages, tools=[READ_TOOL]))
    assert chat["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_a", "content": "screenshot:"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": ""},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}}]},
    ]


def test_assistant_turn_with_only_thinking_disappears():
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "xyz"}]},
                {"role": "user", "content": "again"}]
    chat, dropped = translate(base(messages=messages))
    assert chat["messages"] == [{"role": "user", "content": "q"}, {"role": "user", "content": "again"}]
    assert dropped == ["thinking_blocks"]


def test_server_tools_are_dropped_and_named():
    tools = [READ_TOOL, {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
             {"type": "bash_20250124", "name": "bash"}, {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
             {"type": "code_execution_20250825", "name": "code_execution"}]
    chat, dropped = translate(base(tools=tools))
    assert [t["function"]["name"] for t in chat["tools"]] == ["read_file"]
    assert dropped == ["tools.web_search_20250305", "tools.bash_20250124", "tools.text_editor_20250728",
                       "tools.code_execution_20250825"]


@pytest.mark.parametrize(("choice", "expected", "parallel"), [
    ({"type": "auto"}, "auto", None),
    ({"type": "any"}, "required", None),
    ({"type": "none"}, "none", None),
    ({"type": "tool", "name": "read_file"}, {"type": "function", "function": {"name": "read_file"}}, None),
    ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
])
def test_tool_choice(choice, expected, parallel):
    chat, dropped = translate(base(tools=[READ_TOOL], tool_choice=choice))
    assert chat["tool_choice"] == expected
    assert chat.get("parallel_tool_calls") is parallel
    assert dropped == []


def test_tool_choice_forcing_a_dropped_server_tool_is_named():
    chat, dropped = translate(base(tools=[READ_TOOL, {"type": "web_search_20250305", "name": "web_search"}],
                                   tool_choice={"type": "tool", "name": "web_search"}))
    assert "tool_choice" not in chat
    assert dropped == ["tools.web_search_20250305", "tool_choice"]


# --- request: thinking, effort, odd fields --------------------------------------------------------
@pytest.mark.parametrize(("budget", "effort"), [(1024, "low"), (4096, "low"), (10000, "medium"),
                                                (16384, "medium"), (31999, "high")])
def test_thinking_budget_maps_to_reasoning_effort(budget, effort):
    chat, dropped = translate(base(max_tokens=32000, thinking={"type": "enabled", "budget_tokens": budget}))
    assert chat["reasoning_effort"] == effort
    assert dropped == []


def test_output_effort_wins_and_adaptive_sets_nothing():
    chat, _ = translate(base(thinking={"type": "enabled", "budget_tokens": 2000}, output_config={"effort": "high"}))
    assert chat["reasoning_effort"] == "high"
    for kind in ("adaptive", "disabled"):
        assert "reasoning_effort" not in messages_to_chat(base(thinking={"type": kind}))[0]


def test_output_format_becomes_json_schema_response_format():
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    chat, _ = translate(base(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def test_untranslatable_fields_are_named_and_deduplicated():
    body = base(top_k=40, service_tier="standard_only", cache_control={"type": "ephemeral"},
                context_management={"edits": []}, system=[{"type": "text", "text": "s",
                                                           "cache_control": {"type": "ephemeral"}}])
    chat, dropped = messages_to_chat(body)
    assert dropped == ["cache_control", "top_k", "service_tier", "context_management"]
    assert not {"top_k", "service_tier", "context_management", "cache_control"} & set(chat)


def test_system_role_messages_are_kept():
    messages = [{"role": "user", "content": "a"}, {"role": "system", "content": "new rule"},
                {"role": "user", "content": "b"}]
    chat, _ = messages_to_chat(base(messages=messages))
    assert chat["messages"][1] == {"role": "system", "content": "new rule"}


def test_final_assistant_prefill_is_kept():
    messages = [{"role": "user", "content": "Pick A or B"}, {"role": "assistant", "content": "The answer is ("}]
    chat, _ = translate(base(messages=messages))
    assert chat["messages"][-1] == {"role": "assistant", "content": "The answer is ("}


# --- request: malformed input ---------------------------------------------------------------------
TOOL_TURN = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}


@pytest.mark.parametrize(("body", "param"), [
    ({"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    (base(max_tokens=0), "max_tokens"),
    (base(max_tokens=True), "max_tokens"),
    (base(messages=[]), "messages"),
    (base(messages="hi"), "messages"),
    (base(messages=["hi"]), "messages[0]"),
    (base(messages=[{"role": "bot", "content": "x"}]), "messages[0].role"),
    (base(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (base(messages=[{"role": "user", "content": []}]), "messages[0].content"),
    (base(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "messages[0].content[0]"),
    (base(messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}]), "messages[0].content[0].text"),
    (base(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]),
     "messages[0].content[0].type"),
    (base(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9"}]}]),
     "messages[0].content[0].tool_use_id"),
    (base(messages=[{"role": "user", "content": "q"}, TOOL_TURN,
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": "yes"}]}]),
     "messages[2].content[0].is_error"),
    (base(messages=[{"role": "user", "content": "q"},
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}]),
     "messages[1].content[0].type"),
    (base(messages=[{"role": "user", "content": "q"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": "{}"}]}]),
     "messages[1].content[0].input"),
    (base(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": PNG}}]}]),
     "messages[0].content[0].source.media_type"),
    (base(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "ftp://x"}}]}]),
     "messages[0].content[0].source.url"),
    (base(system=[{"type": "image", "source": {}}]), "system[0].type"),
    (base(system=5), "system"),
    (base(tools=[{"name": "f"}]), "tools[0].input_schema"),
    (base(tools=[{"input_schema": {"type": "object"}}]), "tools[0].name"),
    (base(tools={"name": "f"}), "tools"),
    (base(tools=[READ_TOOL], tool_choice={"type": "sometimes"}), "tool_choice.type"),
    (base(tools=[READ_TOOL], tool_choice={"type": "tool", "name": "nope"}), "tool_choice.name"),
    (base(tools=[READ_TOOL], tool_choice={"type": "tool"}), "tool_choice.name"),
    (base(temperature=1.5), "temperature"),
    (base(top_p="high"), "top_p"),
    (base(top_k=-1), "top_k"),
    (base(stop_sequences="END"), "stop_sequences"),
    (base(metadata={"user_id": 7}), "metadata.user_id"),
    (base(stream="yes"), "stream"),
    (base(thinking={"type": "enabled", "budget_tokens": 500}), "thinking.budget_tokens"),
    (base(thinking={"type": "on"}), "thinking.type"),
    (base(output_config={"effort": "extreme"}), "output_config.effort"),
    (base(output_config={"format": {"type": "json_object"}}), "output_config.format"),
])
def test_malformed_input_is_a_400_naming_the_field(body, param):
    with pytest.raises(GatewayError) as caught:
        messages_to_chat(body)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_a_body_that_is_not_an_object_is_a_400():
    with pytest.raises(GatewayError) as caught:
        messages_to_chat(["not", "an", "object"])  # type: ignore[arg-type]
    assert caught.value.status == 400


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
