"""The Anthropic adapter against a loopback server speaking Anthropic's wire format."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio

from gateway.clock import FakeClock
from gateway.errors import UpstreamError
from gateway.policy.model import ProviderSpec, Timeouts
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.anthropic_translate import error_body, to_anthropic
from gateway.providers.base import UpstreamRequest, UpstreamResponse
from tests.support.mock_anthropic import ErrorReply, MockAnthropic, RawReply, Reply, mock_anthropic

__all__ = ["mock_anthropic"]  # a fixture: pytest finds it here, and ruff sees it used

PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def make_spec(url: str, key: str, first_byte_s: float = 5.0) -> ProviderSpec:
    return ProviderSpec(
        name="claude",
        type="anthropic",
        base_url=url,
        api_key=key,
        timeouts=Timeouts(connect_s=2.0, first_byte_s=first_byte_s, total_s=10.0),
    )


@pytest_asyncio.fixture
async def provider(mock_anthropic: MockAnthropic) -> AsyncIterator[AnthropicProvider]:
    p = AnthropicProvider(
        make_spec(mock_anthropic.url, mock_anthropic.api_key), clock=FakeClock(1_700_000_000)
    )
    yield p
    await p.close()


def chat(stream: bool = False, **body: Any) -> UpstreamRequest:
    body.setdefault("model", "claude-sonnet-4-5")
    body.setdefault("messages", [{"role": "user", "content": "Hello"}])
    return UpstreamRequest(endpoint="chat", body=body, stream=stream, request_id="req-1")


async def chunks(resp: UpstreamResponse) -> list[dict[str, Any]]:
    assert resp.events is not None
    return [orjson.loads(c) async for c in resp.events]


def whole(resp: UpstreamResponse) -> dict[str, Any]:
    assert resp.body is not None and not resp.is_stream
    return orjson.loads(resp.body)


# --- request translation ------------------------------------------------------------------------------
async def test_request_translation_and_headers(
    provider: AnthropicProvider, mock_anthropic: MockAnthropic
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "What is on these?"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": PNG}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
            ],
        },
    ]
    req = chat(
        messages=messages, max_completion_tokens=50, temperature=0.2, top_p=0.9, stop="END", user="u-42"
    )
    resp = await provider.send(req)
    assert resp.status == 200
    assert mock_anthropic.paths == ["/v1/messages"]
    [headers] = mock_anthropic.headers
    assert headers["x-api-key"] == mock_anthropic.api_key
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers
    assert mock_anthropic.requests == [
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 50,
            "system": "Be brief.\n\nAnswer in French.",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is on these?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                    ],
                }
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-42"},
        }
    ]


async def test_tools_tool_calls_and_tool_results(
    provider: AnthropicProvider, mock_anthropic: MockAnthropic
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call, {**call, "id": "call_2"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rainy"}]},
    ]
    await provider.send(
        chat(messages=messages, tools=[WEATHER_TOOL], tool_choice="required", stop=["a", "b"])
    )
    sent = mock_anthropic.requests[0]
    assert sent["max_tokens"] == 4096
    assert sent["stop_sequences"] == ["a", "b"]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Paris"}},
        ],
    }
    assert sent["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "rainy"},
        ],
    }


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
def test_tool_choice_mapping(choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    body = chat(tools=[WEATHER_TOOL], tool_choice=choice, parallel_tool_calls=parallel).body
    assert to_anthropic(body).get("tool_choice") == expected


def test_json_schema_response_format_becomes_output_config_format() -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}
    body = to_anthropic(chat(response_format=fmt).body)
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in to_anthropic(chat(response_format={"type": "text"}).body)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]},
            "messages[0].content[0].file",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}
                ]
            },
            "messages[0].content[0].image_url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
    ],
)
async def test_untranslatable_requests_get_a_local_400(
    provider: AnthropicProvider, mock_anthropic: MockAnthropic, extra: dict[str, Any], param: str
) -> None:
    resp = await provider.send(chat(**extra))
    assert resp.status == 400
    assert whole(resp)["error"]["param"] == param
    assert mock_anthropic.requests == []


@pytest.mark.parametrize("endpoint", ["embeddings", "completions"])
async def test_other_endpoints_are_unsupported(
    provider: AnthropicProvider, mock_anthropic: MockAnthropic, endpoint: str
) -> None:
    req = UpstreamRequest(
        endpoint=endpoint, body={"model": "claude", "input": "x"}, stream=False, request_id="r"
    )
    resp = await provider.send(req)
    err = whole(resp)["error"]
    assert resp.status == 400
    assert err["type"] == "invalid_request_error" and err["code"] == "unsupported_endpoint"
    assert endpoint in err["message"]
    assert mock_anthropic.requests == []


# --- whole responses ----------------------------------------------------------------------------------
async def test_text_response(provider: AnthropicProvider, mock_anthropic: MockAnthropic) -> None:
    mock_anthropic.push(
        Reply(text="Bonjour.", thinking="Let me think", usage={"input_tokens": 10, "output_tokens": 3})
    )
    resp = await provider.send(chat())
    assert resp.headers["request-id"] == "req_mock_0001"
    assert whole(resp) == {
        "id": "msg_mock_0001",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "claude-sonnet-4-5",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Bonjour.", "refusal": None,
                            "reasoning_content": "Let me think"},  # thinking kept as reasoning text
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 3,
            "total_tokens": 13,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


async def test_tool_call_response_and_cached_usage(
    provider: AnthropicProvider, mock_anthropic: MockAnthropic
) -> None:
    usage = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 900,
        "output_tokens": 20,
    }
    mock_anthropic.push(Reply(text="", tool_calls=[("get_weather", {"city": "Paris"})], usage=usage))
    out = whole(await provider.send(chat(tools=[WEATHER_TOOL])))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_mock_1_0" and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert out["usage"] == {
        "prompt_tokens": 1005,
        "completion_tokens": 20,
        "total_tokens": 1025,
        "prompt_tokens_details": {"cached_tokens": 900, "cache_write_tokens": 100},  # priced apart
    }


@pytest.mark.parametrize(
    ("extra", "finish", "content"),
    [({"stop": ["three"]}, "stop", "one two "), ({"max_tokens": 2}, "length", "one two ")],
)
async def test_finish_reasons(
    provider: AnthropicProvider,
    mock_anthropic: MockAnthropic,
    extra: dict[str, Any],
    finish: str,
    content: str,
) -> None:
    mock_anthropic.push(Reply(text="one two three four"))
    choice = whole(await provider.send(chat(**extra)))["choices"][0]
    assert choice["finish_reason"] == finish
    assert choice["message"]["content"] == content


# --- streams ------------------------------------------------------------------------------------------
async def test_stream_text(provider: AnthropicProvider, mock_anthropic: MockAnthropic) -> None:
    mock_anthropic.push(Reply(text="Hello there, friend.", thinking="hmm"))
    resp = await provider.send(chat(stream=True))
    got = await chunks(resp)
    assert resp.status == 200
    assert mock_anthropic.requests[0]["stream"] is True
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "msg_mock_0001" for c in got)
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in got) == "Hello there, friend."
    assert [c["choices"][0]["finish_reason"] for c in got[-2:]] == [None, "stop"]
    assert got[-1]["choices"][0]["delta"] == {}
    assert all("usage" not in c for c in got)


async def test_stream_usage_chunk_when_asked(
    provider: AnthropicProvider, mock_anthropic: MockAnthropic
) -> None:
    usage = {"input_tokens": 7, "cache_read_input_tokens": 50, "output_tokens": 4}
    mock_anthropic.push(Reply(text="Hi", usage=usage))
    got = await chunks(await provider.send(chat(stream=True, stream_options={"include_usage": True})))
    assert got[-2]["choices"][0]["finish_reason"] == "stop"
    assert got[-1]["choices"] == []
    assert got[-1]["usage"] == {
        "prompt_tokens": 57,
        "completion_tokens": 4,
        "total_tokens": 61,
        "prompt_tokens_details": {"cached_tokens": 50},
    }


async def test_stream_tool_call_deltas(provider: AnthropicProvider, mock_anthropic: MockAnthropic) -> None:
    calls = [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome", "units": "metric"})]
    mock_anthropic.push(Reply(text="Let me check.", tool_calls=calls))
    got = await chunks(await provider.send(chat(stream=True, tools=[WEATHER_TOOL])))
    deltas = [d for c in got for d in c["choices"][0]["delta"].get("tool_calls", [])]
    starts = [d for d in deltas if "id" in d]
    assert starts == [
        {
            "index": i,
            "id": f"toolu_mock_1_{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
        for i in (0, 1)
    ]
    for i, (_, args) in enumerate(calls):
        fragments = [d["function"]["arguments"] for d in deltas if d["index"] == i and "id" not in d]
        assert len(fragments) > 1 and all(fragments)
        assert orjson.loads("".join(fragments)) == args
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in got) == "Let me check."
    assert got[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (Reply(text="a long answer", cut_after=4, cut="abort"), "broke"),
        (Reply(text="a long answer", cut_after=4, cut="eof"), "without message_stop"),
        (Reply(text="a long answer", error_after=4), "overloaded_error: Overloaded"),
    ],
)
async def test_stream_cut_raises_from_the_iterator(
    provider: AnthropicProvider, mock_anthropic: MockAnthropic, reply: Reply, words: str
) -> None:
    mock_anthropic.push(reply)
    resp = await provider.send(chat(stream=True))
    assert resp.status == 200
    got: list[bytes] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in resp.events:  # type: ignore[union-attr]
            got.append(chunk)
    assert info.value.kind == "stream_cut"
    assert words in info.value.message
    assert got and orjson.loads(got[0])["choices"][0]["delta"]["role"] == "assistant"
    assert mock_anthropic.api_key not in info.value.message


async def test_stalled_stream_times_out(mock_anthropic: MockAnthropic) -> None:
    mock_anthropic.push(Reply(text="slow answer", event_delay_s=0.5))
    provider = AnthropicProvider(make_spec(mock_anthropic.url, mock_anthropic.api_key, first_byte_s=0.2))
    try:
        resp = await provider.send(chat(stream=True))
        with pytest.raises(UpstreamError) as info:
            await chunks(resp)
        assert info.value.kind == "timeout"
    finally:
        await provider.close()


# --- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("reply", "openai_type"),
    [
        (ErrorReply.overloaded(), "service_unavailable_error"),
        (ErrorReply.rate_limited("7"), "rate_limit_error"),
        (ErrorReply.bad_request("messages.0: bad"), "invalid_request_error"),
    ],
)
async def test_error_responses_in_openai_shape(
    provider: AnthropicProvider,
    mock_anthropic: MockAnthropic,
    reply: ErrorReply,
    openai_type: str,
    stream: bool,
) -> None:
    mock_anthropic.push(reply)
    resp = await provider.send(chat(stream=stream))
    assert resp.status == reply.status and not resp.is_stream
    assert whole(resp) == {
        "error": {"message": reply.message, "type": openai_type, "param": None, "code": reply.type}
    }
    assert resp.headers.get("retry-after") == reply.headers.get("retry-after")


async def test_wrong_key_never_echoed(mock_anthropic: MockAnthropic) -> None:
    secret = "sk-ant-wrong-SECRET-123"
    provider = AnthropicProvider(make_spec(mock_anthropic.url, secret))
    try:
        resp = await provider.send(chat())
        assert resp.status == 401
        assert whole(resp)["error"]["type"] == "authentication_error"
        assert secret.encode() not in resp.body  # type: ignore[operator]
        assert mock_anthropic.headers[0]["x-api-key"] == secret
    finally:
        await provider.close()


async def test_connect_failure_is_an_upstream_error_without_the_key() -> None:
    secret = "sk-ant-SECRET-456"
    async with MockAnthropic() as server:
        url = server.url  # closed on exit: the port now refuses connections
    provider = AnthropicProvider(make_spec(url, secret))
    try:
        with pytest.raises(UpstreamError) as info:
            await provider.send(chat())
        assert info.value.kind == "connect"
        assert secret not in str(info.value) and secret not in repr(provider.spec)
    finally:
        await provider.close()


def test_error_messages_are_redacted() -> None:
    echoed = b'{"type":"error","error":{"type":"authentication_error","message":"bad key sk-1"}}'
    assert orjson.loads(error_body(401, echoed, "claude", "sk-1"))["error"]["message"] == "bad key [redacted]"


async def test_non_anthropic_error_body_and_v1_base(mock_anthropic: MockAnthropic) -> None:
    mock_anthropic.push(RawReply(502, b"<html>Bad gateway</html>", "text/html"))
    provider = AnthropicProvider(make_spec(mock_anthropic.url + "/v1/", mock_anthropic.api_key))
    try:
        resp = await provider.send(chat())
    finally:
        await provider.close()
    assert mock_anthropic.paths == ["/v1/messages"]
    assert resp.status == 502
    assert whole(resp)["error"] == {
        "message": "claude answered HTTP 502",
        "type": "server_error",
        "param": None,
        "code": "api_error",
    }


async def test_malformed_answers_are_protocol_errors(
    provider: AnthropicProvider, mock_anthropic: MockAnthropic
) -> None:
    bad_event = b"event: message_start\ndata: {not json\n\n"
    mock_anthropic.push(RawReply(200, b'{"type": "message"}'), RawReply(200, bad_event, "text/event-stream"))
    with pytest.raises(UpstreamError) as whole_error:
        await provider.send(chat())
    resp = await provider.send(chat(stream=True))
    with pytest.raises(UpstreamError) as stream_error:
        await chunks(resp)
    assert whole_error.value.kind == stream_error.value.kind == "protocol"


@pytest.mark.parametrize(("body", "thinking"), [
    ({"reasoning_effort": "high", "max_tokens": 32000}, {"type": "enabled", "budget_tokens": 24576}),
    ({"reasoning_effort": "high", "max_tokens": 4000}, {"type": "enabled", "budget_tokens": 3999}),
    ({"reasoning_effort": "low"}, {"type": "enabled", "budget_tokens": 2048}),
    ({"reasoning_effort": "low", "max_tokens": 1000}, None),  # no room for the 1024-token minimum
    ({"reasoning_effort": "medium", "temperature": 0.2}, None),  # explicit sampling wins
    ({"reasoning_effort": "medium", "top_k": 5}, None),
    ({}, None),
])
def test_reasoning_effort_becomes_a_thinking_budget(body, thinking):
    from gateway.providers.anthropic_translate import to_anthropic

    out = to_anthropic({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body})
    assert out.get("thinking") == thinking
