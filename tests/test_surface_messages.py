"""Anthropic Messages surface: request translation (Messages -> chat). Pure functions, no server.

Every translated body is first accepted by the ``anthropic`` SDK's request types and its result by
the ``openai`` SDK's chat request types, so a shape error fails here, not in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from gateway.errors import GatewayError
from gateway.surfaces.anthropic_request import messages_to_chat

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
    (base(messages=[{"role": "user", "content": [{"type": "document", "citations": [True],
                                                  "source": {"type": "text", "data": "notes"}}]}]),
     "messages[0].content[0].citations"),
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


def test_an_empty_error_result_still_says_error():
    messages = tool_conversation()[:2] + [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_a", "is_error": True},
        {"type": "tool_result", "tool_use_id": "toolu_b", "content": []}]}]
    chat, _ = translate(base(messages=messages, tools=[READ_TOOL]))
    assert [m["content"] for m in chat["messages"][2:]] == ["Error", ""]
