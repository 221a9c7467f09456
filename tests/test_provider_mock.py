"""The built-in mock provider, driven directly: UpstreamRequest in, OpenAI wire format out.

Bodies and chunks are parsed with the openai SDK's own pydantic types, so a shape OpenAI would not
send fails here; JSON answers are checked with ``jsonschema`` (installed with the test extras, via
openai-agents -> mcp).
"""

from __future__ import annotations

import base64
import json
import random
import struct
import time
from typing import Any

import jsonschema
import orjson
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.policy.model import ProviderSpec
from gateway.providers.base import UpstreamRequest, UpstreamResponse
from gateway.providers.mock import EMBEDDING_DIM, MockOptions, MockProvider
from gateway.providers.mock_schema import placeholder
from gateway.tokens import prompt_tokens, text_tokens

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 3, "maximum": 9},
        "threshold": {"type": "number", "exclusiveMinimum": 1.5},
        "alerts": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}, "note": {"type": "string"}},
                  "required": ["lat"], "additionalProperties": False},
        "optional": {"type": "string"},
    },
    "required": ["city", "unit", "days", "threshold", "alerts", "tags", "where"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string", "format": "uuid"}}, "required": ["zone"]}}},
]
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def provider(**options: Any) -> MockProvider:
    return MockProvider(ProviderSpec(name="m", type="mock", options=MockOptions(**options)), rng=random.Random(1))


async def send(body: dict, endpoint: str = "chat", stream: bool = False, **options: Any) -> UpstreamResponse:
    return await provider(**options).send(UpstreamRequest(endpoint, {"model": "mock-small", **body}, stream, "r1"))


async def chat(body: dict) -> ChatCompletion:
    resp = await send(body)
    assert resp.status == 200 and resp.body is not None and not resp.is_stream
    return ChatCompletion.model_validate(orjson.loads(resp.body))


async def chunks(body: dict, endpoint: str = "chat", **options: Any) -> list[dict]:
    resp = await send({**body, "stream": True}, endpoint, stream=True, **options)
    assert resp.status == 200 and resp.events is not None
    return [orjson.loads(event) async for event in resp.events]


async def chat_chunks(body: dict) -> list[ChatCompletionChunk]:
    return [ChatCompletionChunk.model_validate(c) for c in await chunks(body)]


def streamed_texts(parsed: list[ChatCompletionChunk]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in parsed:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    return texts


def finishes(parsed: list[ChatCompletionChunk]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in parsed:
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                assert choice.index not in out, "a choice finished twice"
                out[choice.index] = choice.finish_reason
    return out


# --- text, n, usage, max_tokens ---------------------------------------------------------------------

async def test_plain_chat_answer_and_usage_are_unchanged():
    body = {"messages": USER}
    out = await chat(body)
    assert out.object == "chat.completion" and len(out.choices) == 1
    assert out.choices[0].message.content == "Mock answer to: What is the weather in Paris?"
    assert out.choices[0].finish_reason == "stop" and out.choices[0].message.tool_calls is None
    assert out.usage is not None
    assert out.usage.prompt_tokens == prompt_tokens("chat", {"model": "mock-small", **body})
    assert out.usage.completion_tokens == text_tokens(out.choices[0].message.content)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


async def test_n_choices_each_indexed_distinct_and_counted_in_usage():
    out = await chat({"messages": USER, "n": 3})
    assert [c.index for c in out.choices] == [0, 1, 2]
    contents = [c.message.content or "" for c in out.choices]
    assert len(set(contents)) == 3 and contents[0] == "Mock answer to: What is the weather in Paris?"
    assert all("What is the weather in Paris?" in c for c in contents)
    assert out.usage is not None and out.usage.completion_tokens == sum(text_tokens(c) for c in contents)


async def test_stream_interleaves_choices_and_matches_the_whole_answer():
    body = {"messages": USER, "n": 2, "stream_options": {"include_usage": True}}
    whole = await chat(body)
    parsed = await chat_chunks(body)
    assert all(c.object == "chat.completion.chunk" for c in parsed)
    content_order = [c.choices[0].index for c in parsed if c.choices and c.choices[0].delta.content]
    assert content_order[:4] == [0, 1, 0, 1], "choices are interleaved chunk by chunk"
    assert all(len(c.choices) <= 1 for c in parsed)
    assert streamed_texts(parsed) == {i: c.message.content for i, c in enumerate(whole.choices)}
    assert finishes(parsed) == {0: "stop", 1: "stop"}
    first = {c.choices[0].index: c.choices[0].delta for c in reversed(parsed) if c.choices}
    assert first[0].role == "assistant" and first[1].role == "assistant"
    assert parsed[-1].choices == [] and parsed[-1].usage == whole.usage


async def test_completions_n_whole_and_streamed():
    body = {"prompt": "Say hi", "n": 2}
    resp = await send(body, "completions")
    assert resp.body is not None
    whole = Completion.model_validate(orjson.loads(resp.body))
    assert whole.object == "text_completion"
    assert [c.text for c in whole.choices] == ["Mock answer to: Say hi", "Mock answer 2 to: Say hi"]
    assert [c.index for c in whole.choices] == [0, 1]
    assert whole.usage is not None and whole.usage.completion_tokens == sum(text_tokens(c.text) for c in whole.choices)
    texts: dict[int, str] = {}
    for raw in await chunks(body, "completions"):
        # OpenAI streams ``finish_reason: null`` that the SDK's (non-stream) type does not allow
        assert raw["object"] == "text_completion"
        for choice in raw["choices"]:
            assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == {0: whole.choices[0].text, 1: whole.choices[1].text}


async def test_max_tokens_trims_content_and_says_length():
    out = await chat({"messages": USER, "max_tokens": 3})
    assert out.choices[0].message.content == "Mock answer "
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 3


# --- tools ------------------------------------------------------------------------------------------

async def test_tool_call_to_the_first_tool_with_arguments_valid_for_its_schema():
    out = await chat({"messages": USER, "tools": TOOLS})
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"
    args = json.loads(calls[0].function.arguments)
    jsonschema.validate(args, WEATHER)
    assert set(args) == set(WEATHER["required"])  # required properties only
    assert args["unit"] == "celsius" and args["days"] == 3 and args["threshold"] > 1.5
    assert isinstance(args["alerts"], bool) and len(args["tags"]) == 2 and set(args["where"]) == {"lat"}
    assert out.usage is not None
    assert out.usage.completion_tokens == text_tokens("get_weather") + text_tokens(calls[0].function.arguments)


@pytest.mark.parametrize(("choice", "name"), [
    ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
    ("required", "get_weather"),
    ("auto", "get_weather"),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "get_time"}}]}}, "get_time"),
])
async def test_tool_choice_picks_the_function(choice, name):
    out = await chat({"messages": USER, "tools": TOOLS, "tool_choice": choice})
    calls = out.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == [name]
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)
    jsonschema.validate(json.loads(calls[0].function.arguments), schema, format_checker=jsonschema.FormatChecker())


async def test_tool_choice_none_answers_text():
    out = await chat({"messages": USER, "tools": TOOLS, "tool_choice": "none"})
    assert out.choices[0].message.tool_calls is None and out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content == "Mock answer to: What is the weather in Paris?"


async def test_streamed_tool_call_id_and_name_first_then_argument_pieces():
    body = {"messages": USER, "tools": TOOLS, "n": 2}
    whole = await chat(body)
    parsed = await chat_chunks(body)
    by_index: dict[int, list] = {0: [], 1: []}
    for chunk in parsed:
        for choice in chunk.choices:
            by_index[choice.index].extend(choice.delta.tool_calls or [])
    for index, deltas in by_index.items():
        head, rest = deltas[0], deltas[1:]
        expected = (whole.choices[index].message.tool_calls or [])[0]
        assert head.id == expected.id and head.function is not None and head.function.name == expected.function.name
        assert head.type == "function" and head.index == 0
        assert len(rest) >= 3 and all(d.id is None and d.function and d.function.name is None for d in rest)
        arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
        assert arguments == expected.function.arguments
        jsonschema.validate(json.loads(arguments), WEATHER)
    assert whole.choices[0].message.tool_calls[0].id != whole.choices[1].message.tool_calls[0].id
    assert finishes(parsed) == {0: "tool_calls", 1: "tool_calls"}


def after_tool(extra: list[dict] | None = None) -> list[dict]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    return [*USER, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}, *(extra or [])]


@pytest.mark.parametrize("extra", [None, [{"role": "user", "content": "thanks, and?"}]])
async def test_after_a_tool_result_the_answer_mentions_its_output(extra):
    out = await chat({"messages": after_tool(extra), "tools": TOOLS})
    assert out.choices[0].message.tool_calls is None and out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content == "Mock answer from get_weather: 18C and sunny"
    streamed = await chat_chunks({"messages": after_tool(extra), "tools": TOOLS})
    assert streamed_texts(streamed) == {0: "Mock answer from get_weather: 18C and sunny"}


async def test_a_new_user_turn_after_the_answer_calls_the_tool_again():
    messages = [*after_tool(), {"role": "assistant", "content": "It is sunny."},
                {"role": "user", "content": "And tomorrow?"}]
    out = await chat({"messages": messages, "tools": TOOLS})
    assert out.choices[0].finish_reason == "tool_calls"


# --- response_format --------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "$defs": {"Address": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^.*$"}},
                          "required": ["zip"], "additionalProperties": False}},
    "properties": {
        "name": {"type": "string", "maxLength": 4},
        "age": {"type": ["integer", "null"], "minimum": 18, "multipleOf": 5},
        "role": {"anyOf": [{"type": "null"}, {"enum": ["admin", "user"]}]},
        "home": {"$ref": "#/$defs/Address"},
        "since": {"type": "string", "format": "date-time"},
        "kind": {"const": "person"},
        "scores": {"type": "array", "items": {"type": "number", "maximum": -2}},
    },
    "required": ["name", "age", "role", "home", "since", "kind", "scores"],
    "additionalProperties": False,
}


async def test_json_schema_answer_is_valid_whole_and_streamed():
    body = {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {
        "name": "person", "strict": True, "schema": PERSON}}}
    out = await chat(body)
    text = out.choices[0].message.content or ""
    value = json.loads(text)
    jsonschema.validate(value, PERSON, format_checker=jsonschema.FormatChecker())
    assert value["age"] == 20 and value["role"] == "admin" and value["kind"] == "person"
    assert value["scores"] == [-2.0] and set(value["home"]) == {"zip"}
    parsed = await chat_chunks(body)
    assert streamed_texts(parsed) == {0: text}
    assert sum(1 for c in parsed if c.choices and c.choices[0].delta.content) > 3, "streamed in pieces"


async def test_json_object_answer_is_an_object_with_the_text():
    out = await chat({"messages": USER, "response_format": {"type": "json_object"}})
    value = json.loads(out.choices[0].message.content or "")
    assert value == {"answer": "Mock answer to: What is the weather in Paris?"}


@pytest.mark.parametrize("schema", [
    {"type": "object", "allOf": [{"properties": {"a": {"type": "integer", "exclusiveMaximum": -3}},
                                  "required": ["a"]}, {"required": ["b"], "properties": {"b": {"type": "boolean"}}}]},
    {"type": "array", "items": {"type": "string", "minLength": 30}, "minItems": 3, "maxItems": 3},
    {"type": "array", "items": {"type": "integer"}, "maxItems": 0},
    {"oneOf": [{"type": "number", "minimum": 0.25, "maximum": 0.5}]},
    {"type": "object", "properties": {"n": {"type": "null"}, "e": {"type": "string", "format": "email"}},
     "required": ["n", "e"]},
    {"$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
     "$ref": "#/$defs/Node"},
])
def test_placeholder_is_valid_for_simple_schemas(schema):
    jsonschema.validate(placeholder(schema), schema, format_checker=jsonschema.FormatChecker())


# --- determinism, embeddings, options ---------------------------------------------------------------

async def test_same_request_same_answer():
    for body in ({"messages": USER, "tools": TOOLS, "n": 2}, {"messages": USER, "response_format": {
            "type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}}):
        first, second = await chat(body), await chat(body)
        assert first.choices == second.choices and first.usage == second.usage
        assert streamed_texts(await chat_chunks(body)) == streamed_texts(await chat_chunks(body))


async def embed(body: dict) -> CreateEmbeddingResponse:
    resp = await send(body, "embeddings")
    assert resp.status == 200 and resp.body is not None
    return CreateEmbeddingResponse.model_validate(orjson.loads(resp.body))


async def test_embeddings_dimensions_float_and_base64():
    default = await embed({"input": ["a", "b"]})
    assert [len(d.embedding) for d in default.data] == [EMBEDDING_DIM, EMBEDDING_DIM]
    wide = await embed({"input": ["a", "b"], "dimensions": 100})
    assert [len(d.embedding) for d in wide.data] == [100, 100] and [d.index for d in wide.data] == [0, 1]
    assert wide.data[0].embedding[:EMBEDDING_DIM] == default.data[0].embedding
    assert wide.data[0].embedding != wide.data[1].embedding
    assert len(set(wide.data[0].embedding[32:])) > 10, "values past the first hash block vary"
    assert all(-1 <= v < 1 for v in wide.data[0].embedding)
    resp = await send({"input": "a", "dimensions": 40, "encoding_format": "base64"}, "embeddings")
    raw = orjson.loads(resp.body or b"")["data"][0]["embedding"]
    floats = struct.unpack("<40f", base64.b64decode(raw))
    assert floats == pytest.approx(wide.data[0].embedding[:40], abs=1e-6)
    assert wide.usage.prompt_tokens == prompt_tokens("embeddings", {"input": ["a", "b"]})


@pytest.mark.parametrize("dims", [0, -1, "8", 10**6, True])
async def test_embeddings_bad_dimensions_is_a_400(dims):
    resp = await send({"input": "a", "dimensions": dims}, "embeddings")
    assert resp.status == 400
    assert orjson.loads(resp.body or b"")["error"]["param"] == "dimensions"


async def test_failure_rate_and_stream_pacing_still_apply():
    assert (await send({"messages": USER}, failure_rate=1.0)).status == 503
    start = time.monotonic()
    parsed = await chunks({"messages": [{"role": "user", "content": "a b c d"}]}, stream_chunk_ms=20)
    assert time.monotonic() - start >= 0.1 and len(parsed) >= 7


def test_hostile_schemas_give_a_bounded_answer_quickly():
    tree = {"$defs": {"N": {"type": "object", "required": ["l", "r"],
                            "properties": {"l": {"$ref": "#/$defs/N"}, "r": {"$ref": "#/$defs/N"}}}},
            "$ref": "#/$defs/N"}
    nested: dict = {"type": "string", "minLength": 10**9}
    for _ in range(30):
        nested = {"type": "array", "items": nested, "minItems": 10**6}
    start = time.monotonic()
    for schema in (tree, nested):
        assert len(json.dumps(placeholder(schema))) < 200_000
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("body", [
    {"messages": {"role": "user"}, "tools": "x", "tool_choice": {"type": "function", "function": "f"}},
    {"messages": [1, None, {"role": "tool", "content": 5}], "tools": [{"type": "function", "function": {"name": "f"}}],
     "tool_choice": {"type": "allowed_tools", "allowed_tools": [1]}},
    {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"schema": [1]}}, "n": "2"},
    {"messages": [{"role": "assistant", "tool_calls": 7}, *USER], "stream_options": [1],
     "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": 3,
                                                                             "allOf": [{"properties": [1]}]}}}]},
])
async def test_malformed_bodies_still_get_a_valid_answer(body):
    out = await chat(body)
    assert len(out.choices) == 1 and out.usage is not None
    assert all(isinstance(c, ChatCompletionChunk) for c in await chat_chunks(body))
