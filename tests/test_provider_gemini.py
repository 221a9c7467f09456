"""The Gemini adapter: pure translation, then the provider against a loopback Gemini API."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio

from gateway.clock import FakeClock
from gateway.errors import GatewayError, UpstreamError
from gateway.policy.model import ProviderSpec, Timeouts
from gateway.providers.base import UpstreamRequest, UpstreamResponse
from gateway.providers.gemini import GeminiProvider
from gateway.providers.gemini_answer import error_body, split_parts, usage
from gateway.providers.gemini_schema import to_gemini_schema
from gateway.providers.gemini_translate import to_gemini
from tests.support.mock_gemini import ErrorReply, MockGemini, Reply

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"], "additionalProperties": False}}}


# --- request translation ------------------------------------------------------------------------------
def test_system_turns_images_and_generation_config() -> None:
    out = to_gemini({"model": "m", "temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "stop": "END", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "French."}]},
        {"role": "user", "content": "Look:"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                                     {"type": "image_url", "image_url": {"url": "gs://bucket/cat.jpg"}}]},
        {"role": "assistant", "content": "A cat."},
    ]})
    assert out == {
        "systemInstruction": {"parts": [{"text": "Be brief.\n\nFrench."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Look:"}, {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
                                       {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cat.jpg"}}]},
            {"role": "model", "parts": [{"text": "A cat."}]},
        ],
        "generationConfig": {"temperature": 0.2, "topP": 0.9, "maxOutputTokens": 50, "stopSequences": ["END"]},
    }


def test_an_image_url_without_a_known_type_is_a_clear_400() -> None:
    with pytest.raises(GatewayError) as exc:
        to_gemini({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/render?id=3"}}]}]})
    assert exc.value.status == 400 and "data: URL" in exc.value.message
    assert exc.value.param == "messages[0].content[0].image_url"


def test_tools_round_trip_by_name_and_tool_choice() -> None:
    out = to_gemini({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                     "messages": [
                         {"role": "user", "content": "Weather in Paris?"},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": "call_1", "type": "function",
                              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                         {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
                         {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                     ]})
    assert out["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                                   {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]},
    ]
    [decl] = out["tools"][0]["functionDeclarations"]
    assert decl["parameters"] == {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert to_gemini({"messages": [{"role": "user", "content": "x"}], "tools": [TOOL],
                      "tool_choice": "none"})["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}
    with pytest.raises(GatewayError):
        to_gemini({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]})


def test_thought_signatures_ride_in_the_tool_call_id_and_come_back() -> None:
    sig = "CiQB++//cw=="
    [call] = split_parts([{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": sig}])[1]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", call["id"])  # still a plain id for every client and provider
    history = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]},
               {"role": "tool", "tool_call_id": call["id"], "content": "ok"}]
    out = to_gemini({"model": "gemini-2.5-flash", "messages": history})
    assert out["contents"][1]["parts"] == [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": sig}]
    foreign = [history[0], {"role": "assistant", "tool_calls": [{**call, "id": "toolu_01"}]},
               {"role": "tool", "tool_call_id": "toolu_01", "content": "ok"}]
    assert "thoughtSignature" not in to_gemini({"model": "gemini-2.5-flash", "messages": foreign})["contents"][1][
        "parts"][0]
    gemini3 = to_gemini({"model": "gemini-3-pro-preview", "messages": foreign})  # a call another model made
    assert gemini3["contents"][1]["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"


def test_reasoning_effort_becomes_a_thinking_config() -> None:
    msgs = [{"role": "user", "content": "x"}]
    assert to_gemini({"model": "gemini-2.5-pro", "messages": msgs, "reasoning_effort": "low"})[
        "generationConfig"] == {"thinkingConfig": {"thinkingBudget": 1024}}
    assert to_gemini({"model": "gemini-3-pro-preview", "messages": msgs, "reasoning_effort": "high"})[
        "generationConfig"] == {"thinkingConfig": {"thinkingLevel": "high"}}
    with pytest.raises(GatewayError):
        to_gemini({"model": "gemini-2.5-pro", "messages": msgs, "reasoning_effort": "extreme"})


def test_json_schema_becomes_the_openapi_subset() -> None:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
              "additionalProperties": False, "required": ["name", "tags", "size"],
              "properties": {"name": {"type": "string", "description": "who"},
                             "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
                             "size": {"type": ["integer", "null"], "minimum": 0},
                             "kind": {"enum": ["a", "b", None]},
                             "alt": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
              "$defs": {"tag": {"type": "string", "const": "x"}}}
    out = to_gemini({"messages": [{"role": "user", "content": "x"}],
                     "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}})
    config = out["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == {
        "type": "OBJECT", "required": ["name", "tags", "size"],
        "properties": {"name": {"type": "STRING", "description": "who"},
                       "tags": {"type": "ARRAY", "items": {"type": "STRING", "enum": ["x"]}},
                       "size": {"type": "INTEGER", "nullable": True, "minimum": 0},
                       "kind": {"type": "STRING", "enum": ["a", "b"], "nullable": True},
                       "alt": {"type": "STRING", "nullable": True}}}
    recursive = {"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}
    with pytest.raises(GatewayError):
        to_gemini_schema(recursive, "schema")


def test_usage_and_error_translation() -> None:
    assert usage({"promptTokenCount": 10, "candidatesTokenCount": 4, "cachedContentTokenCount": 6,
                  "thoughtsTokenCount": 3}) == {
        "prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 6}, "completion_tokens_details": {"reasoning_tokens": 3}}
    body, headers = error_body(429, ErrorReply.exhausted().body(), "g")
    assert orjson.loads(body)["error"]["type"] == "rate_limit_error" and headers == {"retry-after": "7"}
    body, _ = error_body(502, b"<html>bad gateway</html>", "g")
    assert orjson.loads(body)["error"]["message"] == "g answered HTTP 502"


# --- the provider against the loopback API ------------------------------------------------------------
@pytest_asyncio.fixture
async def server() -> AsyncIterator[MockGemini]:
    mock = await MockGemini().start()
    yield mock
    await mock.stop()


@pytest_asyncio.fixture
async def provider(server: MockGemini) -> AsyncIterator[GeminiProvider]:
    spec = ProviderSpec(name="gem", type="gemini", base_url=server.url, api_key=server.api_key,
                        timeouts=Timeouts(connect_s=2.0, first_byte_s=5.0, total_s=10.0))
    p = GeminiProvider(spec, clock=FakeClock(1_700_000_000))
    yield p
    await p.close()


def chat(stream: bool = False, **body: Any) -> UpstreamRequest:
    body.setdefault("model", "gemini-2.5-flash")
    body.setdefault("messages", [{"role": "user", "content": "Hello there"}])
    return UpstreamRequest(endpoint="chat", body=body, stream=stream, request_id="r1")


async def chunks(resp: UpstreamResponse) -> list[dict[str, Any]]:
    assert resp.events is not None
    return [orjson.loads(c) async for c in resp.events]


async def test_whole_answer_url_key_and_usage(provider: GeminiProvider, server: MockGemini) -> None:
    server.push(Reply(thoughts=5, cached=1))
    resp = await provider.send(chat())
    out = orjson.loads(resp.body)
    assert server.paths == ["/v1beta/models/gemini-2.5-flash:generateContent"]
    assert server.headers[0]["x-goog-api-key"] == server.api_key and "authorization" not in server.headers[0]
    assert out["choices"][0]["message"]["content"] == "Mock answer to: Hello there"  # the thought part is skipped
    assert out["choices"][0]["finish_reason"] == "stop" and out["created"] == 1_700_000_000
    assert out["usage"]["completion_tokens"] == 5 + 5 and out["usage"]["prompt_tokens_details"]["cached_tokens"] == 1


async def test_function_calls_whole_and_streamed(provider: GeminiProvider, server: MockGemini) -> None:
    server.push(Reply(calls=[("get_weather", {"city": "Paris"})]), Reply(calls=[("get_weather", {"city": "Rome"})]))
    out = orjson.loads((await provider.send(chat(tools=[TOOL]))).body)
    [call] = out["choices"][0]["message"]["tool_calls"]
    assert out["choices"][0]["finish_reason"] == "tool_calls" and json.loads(call["function"]["arguments"]) == {
        "city": "Paris"}
    got = await chunks(await provider.send(chat(stream=True, tools=[TOOL])))
    calls = [tc for c in got for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [json.loads(tc["function"]["arguments"]) for tc in calls] == [{"city": "Rome"}]
    assert got[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_stream_text_and_usage_chunk(provider: GeminiProvider, server: MockGemini) -> None:
    resp = await provider.send(chat(stream=True, stream_options={"include_usage": True}))
    assert server.paths == ["/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"]
    got = await chunks(resp)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in got if c["choices"]) == \
        "Mock answer to: Hello there"
    assert got[-2]["choices"][0]["finish_reason"] == "stop"
    assert got[-1]["choices"] == [] and got[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("reply", [Reply(cut_after=2, cut="abort"), Reply(cut_after=2, cut="eof"),
                                   Reply(error_event_after=2)])
async def test_a_cut_stream_raises_upstream_error(provider: GeminiProvider, server: MockGemini, reply: Reply) -> None:
    server.push(reply)
    resp = await provider.send(chat(stream=True))
    with pytest.raises(UpstreamError) as exc:
        await chunks(resp)
    assert exc.value.kind == "stream_cut"
    await resp.aclose()


async def test_safety_blocks(provider: GeminiProvider, server: MockGemini) -> None:
    server.push(Reply(block_reason="SAFETY"), Reply(text="partial", finish="SAFETY"))
    blocked = await provider.send(chat())
    assert blocked.status == 400 and orjson.loads(blocked.body)["error"]["code"] == "content_filter"
    out = orjson.loads((await provider.send(chat())).body)
    assert out["choices"][0]["finish_reason"] == "content_filter"


async def test_errors_keep_their_status_and_embeddings(provider: GeminiProvider, server: MockGemini) -> None:
    server.push(ErrorReply.exhausted())
    resp = await provider.send(chat())
    assert resp.status == 429 and resp.headers["retry-after"] == "7"
    assert orjson.loads(resp.body)["error"]["code"] == "resource_exhausted"
    emb = await provider.send(UpstreamRequest(endpoint="embeddings", stream=False, request_id="e", body={
        "model": "gemini-embedding-001", "input": ["a b", "c"], "dimensions": 4}))
    out = orjson.loads(emb.body)
    assert [len(d["embedding"]) for d in out["data"]] == [4, 4]
    assert server.requests[-1]["requests"][0] == {"model": "models/gemini-embedding-001", "outputDimensionality": 4,
                                                  "content": {"parts": [{"text": "a b"}]}}
    legacy = await provider.send(UpstreamRequest(endpoint="completions", body={"model": "m"}, stream=False,
                                                 request_id="c"))
    assert legacy.status == 400
