"""The Responses surface's pure translation: request -> chat, chat answer -> Response, native usage.

Every chat request is checked against the openai SDK's chat request types and every Response
against its ``Response`` model, so a shape the SDK would not accept fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import completion_create_params as chat_params
from openai.types.responses import Response
from pydantic import TypeAdapter

from gateway.errors import GatewayError
from gateway.surfaces.responses_items import input_to_history, output_to_history
from gateway.surfaces.responses_native import NativeStreamUsage, generated_chars, usage_of_response
from gateway.surfaces.responses_request import responses_to_chat
from gateway.surfaces.responses_response import chat_to_response

_CHAT = TypeAdapter(chat_params.CompletionCreateParamsNonStreaming)
_CHAT_STREAM = TypeAdapter(chat_params.CompletionCreateParamsStreaming)


def chat_of(body: dict, history: list[dict] | None = None) -> tuple[dict, list[str]]:
    """Translate and check the result is a chat request the SDK's types accept (iterables forced,
    as pydantic validates them lazily)."""
    chat, dropped = responses_to_chat(body, history)
    checked = (_CHAT_STREAM if chat.get("stream") else _CHAT).validate_python(chat)
    for message in checked["messages"]:
        for key in ("content", "tool_calls"):
            if not isinstance(message.get(key), str | None):
                list(message[key])
    list(checked.get("tools") or ())
    return chat, dropped


def test_string_input_with_instructions_and_settings() -> None:
    chat, dropped = chat_of({
        "model": "gpt-x", "input": "Hello", "instructions": "Be brief.", "max_output_tokens": 50,
        "temperature": 0.2, "top_p": 0.9, "user": "u1", "stream": True, "store": False,
        "metadata": {"k": "v"}, "prompt_cache_key": "thread-1", "safety_identifier": "h1",
        "service_tier": "flex", "truncation": "disabled", "parallel_tool_calls": True,
    })
    assert chat == {
        "model": "gpt-x",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "user": "u1", "prompt_cache_key": "thread-1",
        "safety_identifier": "h1", "service_tier": "flex",
        "stream": True, "stream_options": {"include_usage": True},
    }
    assert dropped == []  # store/metadata are the caller's; parallel_tool_calls without tools means nothing


def test_items_of_every_translatable_kind() -> None:
    body = {"model": "m", "input": [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is in"},
            {"type": "input_image", "image_url": "https://x/img.png", "detail": "low"},
            {"type": "input_image", "file_id": "file-1", "detail": "auto"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,AAA", "filename": "a.pdf"},
        ]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_a", "name": "lookup", "arguments": "{\"q\":1}"},
        {"type": "function_call", "call_id": "call_b", "name": "lookup", "arguments": "{\"q\":2}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "one"},
        {"type": "function_call_output", "call_id": "call_b",
         "output": [{"type": "input_text", "text": "two"}]},
    ]}
    chat, dropped = chat_of(body)
    assert chat["messages"] == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in"},
            {"type": "image_url", "image_url": {"url": "https://x/img.png", "detail": "low"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAA", "filename": "a.pdf"}},
        ]},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":1}"}},
            {"id": "call_b", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":2}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "one"},
        {"role": "tool", "tool_call_id": "call_b", "content": "two"},
    ]
    assert dropped == ["input.input_image.file_id"]


def test_history_goes_between_instructions_and_input_and_is_not_edited() -> None:
    history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"}]
    kept = [dict(m) for m in history]
    body = {"model": "m", "instructions": "new rules", "previous_response_id": "resp_1", "input": [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]}
    chat, _ = chat_of(body, history)
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant"]
    assert chat["messages"][0]["content"] == "new rules"
    assert chat["messages"][2]["tool_calls"][0]["id"] == "c1"  # joined the stored assistant turn...
    assert history == kept  # ...without editing the stored one
    assert input_to_history(body) == [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]


def test_hosted_features_are_dropped_and_named_once() -> None:
    body = {
        "model": "m", "input": [
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "item_reference", "id": "msg_9"},
            {"id": "msg_10"},  # an item reference without its optional type
            {"type": "brand_new_item"},
            {"role": "user", "content": "hi"},
        ],
        "tools": [
            {"type": "web_search"}, {"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["v"]},
            {"type": "mcp", "server_label": "s"}, {"type": "custom", "name": "apply_patch"},
            {"type": "hologram"},
            {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "web_search_preview"},
        "include": ["reasoning.encrypted_content", "bogus.value"],
        "reasoning": {"effort": "high", "summary": "auto"},
        "truncation": "auto", "background": True, "top_logprobs": 3, "some_future_param": 1,
    }
    chat, dropped = chat_of(body)
    assert dropped == [
        "input.reasoning", "input.web_search_call", "input.item_reference", "input.other",
        "tools.web_search", "tools.file_search", "tools.mcp", "tools.custom", "tools.other",
        "tool_choice.hosted", "reasoning.summary", "include.reasoning.encrypted_content", "include.other",
        "background", "top_logprobs", "truncation", "params.unrecognized",
    ]
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {}}}}]
    assert "tool_choice" not in chat
    assert chat["reasoning_effort"] == "high"
    assert chat["messages"] == [{"role": "user", "content": "hi"}]


def test_namespace_tools_are_flattened_the_way_codex_names_them() -> None:
    body = {"model": "m", "input": [
        {"type": "function_call", "call_id": "c", "namespace": "mcp__gmail__", "name": "_search",
         "arguments": "{}"}, {"type": "function_call_output", "call_id": "c", "output": "[]"}],
        "tools": [{"type": "namespace", "name": "mcp__gmail__", "description": "Mail", "tools": [
            {"type": "function", "name": "_search", "description": "Search mail", "strict": False,
             "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
            {"type": "custom", "name": "freeform"}]}]}
    chat, dropped = chat_of(body)
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "mcp__gmail__search", "description": "Search mail", "strict": False,
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
    assert chat["messages"][0]["tool_calls"][0]["function"]["name"] == "mcp__gmail__search"
    assert dropped == ["tools.custom"]


def test_additional_tools_input_item_declares_tools() -> None:
    """Codex's responses-lite models get their tools in an ``additional_tools`` input item, not ``tools``."""
    search = {"type": "function", "name": "search", "parameters": {"type": "object"}}
    body = {"model": "m", "input": [
        {"type": "additional_tools", "role": "developer", "tools": [
            {"type": "namespace", "name": "web", "description": "Web", "tools": [
                search, {"type": "custom", "name": "exec", "format": {"type": "grammar"}}]}]},
        {"type": "message", "role": "user", "content": "look it up"}],
        "tools": [{"type": "function", "name": "top", "parameters": {"type": "object"}}]}
    chat, dropped = chat_of(body)
    assert [t["function"]["name"] for t in chat["tools"]] == ["top", "web__search"]
    assert chat["messages"] == [{"role": "user", "content": "look it up"}]  # the item is no turn
    assert dropped == ["tools.custom"]
    call = {"id": "call_1", "type": "function", "function": {"name": "web__search", "arguments": "{}"}}
    answer = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]},
                           "finish_reason": "tool_calls"}], "model": "m"}
    item = chat_to_response(answer, response_id="resp_1", request=body, created_at=0)["output"][0]
    assert (item["namespace"], item["name"]) == ("web", "search")
    assert input_to_history(body) == [{"role": "user", "content": "look it up"}]


def test_tool_choice_and_parallel_calls_follow_the_tools() -> None:
    fn = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": True}
    chat, _ = chat_of({"model": "m", "input": "x", "tools": [fn], "parallel_tool_calls": False,
                       "tool_choice": {"type": "function", "name": "get_weather"}})
    assert chat["tools"][0]["function"] == {"name": "get_weather", "parameters": {"type": "object"}, "strict": True}
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False
    chat, _ = chat_of({"model": "m", "input": "x", "tools": [fn], "tool_choice": {
        "type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]}})
    assert chat["tool_choice"] == {"type": "allowed_tools", "allowed_tools": {
        "mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}
    chat, _ = chat_of({"model": "m", "input": "x", "tools": [{"type": "web_search"}], "tool_choice": "required",
                       "parallel_tool_calls": True})
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & chat.keys()  # chat refuses them without tools


@pytest.mark.parametrize(("fmt", "expected"), [
    ({"type": "json_schema", "name": "person", "strict": True,
      "schema": {"type": "object", "properties": {"name": {"type": "string"}}}},
     {"type": "json_schema", "json_schema": {"name": "person", "strict": True,
      "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}),
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "text"}, None),
])
def test_text_format_becomes_response_format(fmt: dict, expected: dict | None) -> None:
    chat, _ = chat_of({"model": "m", "input": "x", "text": {"format": fmt, "verbosity": "low"}})
    assert chat.get("response_format") == expected
    assert chat["verbosity"] == "low"


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 5}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": ["hi"]}, "input[0]"),
    ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": [{"role": "user", "content": 3}]}, "input[0].content"),
    ({"model": "m", "input": [{"role": "user", "content": [{"text": "no type"}]}]}, "input[0].content[0]"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0]"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
     "input[0].arguments"),
    ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": 1}]}, "input[0].output"),
    ({"model": "m", "input": [{"content": "no role, no type"}]}, "input[0]"),
    ({"model": "m", "input": "x", "instructions": ["a"]}, "instructions"),
    ({"model": "m", "input": "x", "tools": {"type": "function"}}, "tools"),
    ({"model": "m", "input": "x", "tools": [{"type": "function", "function": {"name": "chat_shape"}}]},
     "tools[0].name"),
    ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
    ({"model": "m", "input": "x", "include": "reasoning.encrypted_content"}, "include"),
])
def test_malformed_requests_are_400s_naming_the_field(body: dict, param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        responses_to_chat(body)
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.payload()["error"]["type"] == "invalid_request_error"


REQUEST: dict[str, Any] = {
    "model": "gpt-x", "input": "Weather in Paris?", "instructions": "Be terse.", "temperature": 0.3,
    "previous_response_id": "resp_prev", "metadata": {"trace": "t1"}, "store": False,
    "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}},
               "strict": False},
              {"type": "namespace", "name": "mcp__maps", "description": "Maps", "tools": [
                  {"type": "function", "name": "route", "parameters": {"type": "object", "properties": {}}}]}],
    "tool_choice": "auto", "max_output_tokens": 200,
}
USAGE = {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
         "prompt_tokens_details": {"cached_tokens": 10}, "completion_tokens_details": {"reasoning_tokens": 4}}


def completion(message: dict, finish_reason: str = "stop", usage: dict | None = USAGE) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x-2025",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
            "usage": usage}


def response_of(chat: dict, request: dict = REQUEST) -> tuple[dict, Response]:
    out = chat_to_response(chat, response_id="resp_abc", request=request, created_at=1700000000)
    return out, Response.model_validate(out)


def test_text_answer_is_a_completed_response_echoing_the_request() -> None:
    out, resp = response_of(completion({"content": "Sunny, 21C.", "annotations": [{"type": "url_citation",
        "url_citation": {"url": "https://w", "title": "W", "start_index": 0, "end_index": 5}}]}))
    assert resp.output_text == "Sunny, 21C."
    assert (resp.id, resp.object, resp.status, resp.model) == ("resp_abc", "response", "completed", "gpt-x-2025")
    assert resp.completed_at == 1700000000 and resp.incomplete_details is None
    assert resp.output[0].type == "message" and resp.output[0].id == "msg_abc_0"
    assert resp.output[0].content[0].annotations[0].url == "https://w"
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (30, 12, 42)
    assert resp.usage.input_tokens_details.cached_tokens == 10
    assert resp.usage.output_tokens_details.reasoning_tokens == 4
    assert (resp.instructions, resp.temperature, resp.previous_response_id) == ("Be terse.", 0.3, "resp_prev")
    assert (resp.store, resp.metadata, resp.max_output_tokens, resp.tool_choice) == (False, {"trace": "t1"}, 200,
                                                                                       "auto")
    assert [t.type for t in resp.tools] == ["function", "namespace"]
    assert resp.parallel_tool_calls is True and resp.top_p == 1.0
    assert out["text"] == {"format": {"type": "text"}}


def test_tool_calls_and_reasoning_become_items_in_order() -> None:
    _, resp = response_of(completion({
        "content": None, "reasoning_content": "Need the weather tool.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"c\":\"P\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "mcp__maps__route", "arguments": "{}"}},
        ]}, finish_reason="tool_calls"))
    assert [item.type for item in resp.output] == ["reasoning", "function_call", "function_call"]
    reasoning, weather, route = resp.output
    assert reasoning.content is not None and reasoning.content[0].text == "Need the weather tool."
    assert reasoning.summary == []
    assert (weather.id, weather.call_id, weather.name, weather.arguments) == (
        "fc_abc_1", "call_1", "get_weather", "{\"c\":\"P\"}")
    assert (route.name, route.namespace, route.status) == ("route", "mcp__maps", "completed")
    assert resp.status == "completed" and resp.output_text == ""


def test_function_call_round_trip_through_history() -> None:
    message = {"content": "Checking.", "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
    out, _ = response_of(completion(message, finish_reason="tool_calls"))
    stored = input_to_history(REQUEST) + output_to_history(out["output"])
    assert stored == [{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": "Checking.", "tool_calls": message["tool_calls"]}]
    follow_up = {"model": "gpt-x", "previous_response_id": "resp_abc", "input": [
        {"type": "function_call_output", "call_id": "call_9", "output": "{\"t\":21}"}]}
    chat, dropped = chat_of(follow_up, stored)
    assert chat["messages"][-2:] == [stored[-1], {"role": "tool", "tool_call_id": "call_9", "content": "{\"t\":21}"}]
    assert dropped == []
    # the namespaced call comes back flattened, as the tools were declared to the model
    out, _ = response_of(completion({"tool_calls": [
        {"id": "c2", "type": "function", "function": {"name": "mcp__maps__route", "arguments": "{}"}}]}))
    assert output_to_history(out["output"])[0]["tool_calls"][0]["function"]["name"] == "mcp__maps__route"


def test_length_cut_is_incomplete() -> None:
    _, resp = response_of(completion({"content": "It is sun"}, finish_reason="length"))
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output[-1].status == "incomplete" and resp.completed_at is None
    _, resp = response_of(completion({"content": ""}, finish_reason="content_filter", usage=None))
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "content_filter"
    assert resp.output == [] and resp.usage is None


def test_refusal_is_a_refusal_part() -> None:
    _, resp = response_of(completion({"content": None, "refusal": "I can't help with that."}))
    assert resp.output[0].type == "message"
    assert [part.type for part in resp.output[0].content] == ["refusal"]
    assert output_to_history([resp.output[0].model_dump()]) == [
        {"role": "assistant", "content": "", "refusal": "I can't help with that."}]


def test_native_usage_reads_the_responses_form() -> None:
    out, _ = response_of(completion({"content": "Sunny.", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}))
    assert usage_of_response(out) == USAGE
    assert usage_of_response({"id": "resp_x"}) is None
    assert generated_chars(out) == len("Sunny.") + len("{}")
    reader = NativeStreamUsage()
    reader.feed("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Sun"})
    reader.feed(None, {"type": "response.function_call_arguments.delta", "delta": "{\"a\":"})
    reader.feed("response.reasoning_text.delta", {"delta": "not counted"})
    assert (reader.generated_chars, reader.usage, reader.status) == (3 + 5, None, None)
    reader.feed("response.failed", {"type": "response.failed", "response": {"status": "failed", "usage": {
        "input_tokens": 7, "output_tokens": 2, "total_tokens": 9,
        "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}}})
    assert reader.status == "failed"
    assert reader.usage is not None and (reader.usage["prompt_tokens"], reader.usage["completion_tokens"]) == (7, 2)
