"""Bedrock pure pieces: Converse translation, error mapping, the event-stream encoder, SigV4, credentials."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
from typing import Any

import orjson
import pytest

pytest.importorskip("botocore")  # the [aws] extra
from botocore.credentials import Credentials, RefreshableCredentials  # noqa: E402
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer  # noqa: E402

from gateway.errors import GatewayError
from gateway.providers import bedrock_embed as embed
from gateway.providers.aws_sigv4 import AwsCredentials, sign
from gateway.providers.bedrock_errors import translate_error
from gateway.providers.bedrock_stream import StreamFailed, StreamTranslator, frame_event
from gateway.providers.bedrock_translate import from_converse, to_converse
from tests.support.aws_wire import (
    TEST_ACCESS_KEY,
    TEST_SECRET_KEY,
    encode_frame,
    event_frame,
    exception_frame,
    verify,
)

PNG = "iVBORw0KGgo="
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


# -- request translation ----------------------------------------------------------------------------
def test_request_maps_system_images_tools_and_inference_config():
    out = to_converse({
        "model": "m", "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "stop": "END", "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
            {"role": "user", "content": "thanks"},
        ]})
    assert out["system"] == [{"text": "be brief"}]
    assert out["inferenceConfig"] == {"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}
    user, assistant, tool_and_user = out["messages"]
    assert user["content"][1] == {"image": {"format": "png", "source": {"bytes": PNG}}}
    assert assistant == {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}}]}
    assert tool_and_user["role"] == "user"  # the tool result and the next user turn merge (roles alternate)
    assert tool_and_user["content"] == [{"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}},
                                        {"text": "thanks"}]
    spec = out["toolConfig"]["tools"][0]["toolSpec"]
    assert spec["inputSchema"] == {"json": TOOL["function"]["parameters"]} and spec["description"] == "Weather"
    assert out["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    assert "model" not in out


@pytest.mark.parametrize(("choice", "expected"), [("auto", {"auto": {}}), ("required", {"any": {}}), (None, None)])
def test_tool_choice(choice, expected):
    out = to_converse({"messages": [{"role": "user", "content": "x"}], "tools": [TOOL], "tool_choice": choice})
    assert out["toolConfig"].get("toolChoice") == expected


def test_tool_choice_none_leaves_tools_out():
    assert "toolConfig" not in to_converse({"messages": [{"role": "user", "content": "x"}], "tools": [TOOL],
                                            "tool_choice": "none"})


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 2}, "n"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "data:image/bmp;base64,AAAA"}}]}]},
     "messages[0].content[0].image_url"),
])
def test_untranslatable_requests_are_400_naming_the_field(body, param):
    body.setdefault("messages", [{"role": "user", "content": "x"}])
    with pytest.raises(GatewayError) as exc:
        to_converse(body)
    assert exc.value.status == 400 and exc.value.param == param


# -- response translation ---------------------------------------------------------------------------
def test_answer_with_tool_call_cache_usage_and_finish_reason():
    answer = {"output": {"message": {"role": "assistant", "content": [
        {"text": "Let me check."}, {"toolUse": {"toolUseId": "tu1", "name": "get_weather", "input": {"city": "Oslo"}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 100, "cacheWriteInputTokens": 7}}
    out = from_converse(answer, "m:0", 123, "chatcmpl-x")
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me check."
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "tu1" and json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert out["usage"]["prompt_tokens"] == 117 and out["usage"]["completion_tokens"] == 5
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 100, "cache_write_tokens": 7}


@pytest.mark.parametrize(("stop", "finish"), [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
                                              ("guardrail_intervened", "content_filter"),
                                              ("content_filtered", "content_filter")])
def test_stop_reasons(stop, finish):
    answer = {"output": {"message": {"content": [{"text": "x"}]}}, "stopReason": stop, "usage": {}}
    assert from_converse(answer, "m", 0, "id")["choices"][0]["finish_reason"] == finish


# -- errors -----------------------------------------------------------------------------------------
def test_throttling_is_429_even_when_carried_by_a_400():
    status, body = translate_error(400, {"x-amzn-errortype": "ThrottlingException:http://internal.amazon.com/"},
                                   b'{"message": "Too many requests"}', "m", "aws")
    assert status == 429
    assert orjson.loads(body)["error"] == {"message": "Too many requests", "type": "rate_limit_error",
                                           "param": None, "code": "ThrottlingException"}


def test_error_type_from_the_body_and_model_access_named():
    status, body = translate_error(403, {}, b'{"__type": "com.amazon.coral#AccessDeniedException", "message": "no"}',
                                   "anthropic.claude-3-5-sonnet-20240620-v1:0", "aws")
    err = orjson.loads(body)["error"]
    assert status == 403 and err["type"] == "permission_error"
    assert "anthropic.claude-3-5-sonnet-20240620-v1:0" in err["message"] and "model access" in err["message"]


@pytest.mark.parametrize(("kind", "status"), [("ValidationException", 400), ("ServiceUnavailableException", 503),
                                              ("InternalServerException", 500), ("ModelNotReadyException", 503)])
def test_error_statuses(kind, status):
    assert translate_error(400, {"x-amzn-errortype": kind}, b"{}", "m", "aws")[0] == status


# -- event stream -----------------------------------------------------------------------------------
def test_encoder_frames_decode_with_botocore_in_any_split():
    frames = [event_frame("messageStart", {"role": "assistant"}),
              event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo"}}),
              exception_frame("throttlingException", "slow down")]
    wire = b"".join(frames)
    for step in (1, 7, 64, len(wire)):
        buffer, decoded = EventStreamBuffer(), []
        for i in range(0, len(wire), step):
            buffer.add_data(wire[i:i + step])
            decoded += list(buffer)
        assert [m.headers.get(":event-type") or m.headers.get(":exception-type") for m in decoded] == [
            "messageStart", "contentBlockDelta", "throttlingException"]
        assert orjson.loads(decoded[1].payload)["delta"]["text"] == "héllo"
    broken = bytearray(encode_frame({":event-type": "x"}, b"{}"))
    broken[-1] ^= 1
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(broken))
    with pytest.raises(ChecksumMismatch):
        list(buffer)


def test_exception_frame_raises_with_its_type():
    buffer = EventStreamBuffer()
    buffer.add_data(exception_frame("throttlingException", "slow down"))
    msg = next(buffer)
    with pytest.raises(StreamFailed) as exc:
        frame_event(msg.headers, msg.payload)
    assert exc.value.kind == "ThrottlingException" and "slow down" in str(exc.value)


def test_stream_translator_text_tools_finish_and_usage():
    t = StreamTranslator("id", "m", 1, include_usage=True)
    out: list[dict[str, Any]] = []
    for event, data in [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu", "name": "f"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"a":'}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 3, "outputTokens": 4, "cacheReadInputTokens": 2}}),
    ]:
        out += t.feed(event, data)
    assert t.done and t.stopped
    deltas = [c["choices"][0]["delta"] for c in out if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""} and deltas[1] == {"content": "Hi"}
    assert deltas[2]["tool_calls"][0] == {"index": 0, "id": "tu", "type": "function",
                                          "function": {"name": "f", "arguments": ""}}
    args = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:4 + 1] if "tool_calls" in d)
    assert json.loads(args) == {"a": 1}
    assert out[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert out[-1]["choices"] == [] and out[-1]["usage"]["prompt_tokens"] == 5


# -- signing ----------------------------------------------------------------------------------------
def test_model_id_with_colon_is_signed_over_the_encoded_path():
    creds = Credentials(TEST_ACCESS_KEY, TEST_SECRET_KEY)
    path = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    body = b'{"messages": []}'
    headers = sign(creds, "us-west-2", "http://127.0.0.1:9/" + path[1:], body, {"content-type": "application/json"})
    lower = {k.lower(): v for k, v in headers.items()}
    lower["host"] = "127.0.0.1:9"  # what the HTTP client sends; botocore signed it from the URL
    assert "/us-west-2/bedrock/aws4_request" in lower["authorization"]
    assert verify("POST", "127.0.0.1:9", path, lower, body) is None
    assert verify("POST", "127.0.0.1:9", path.replace("%3A", ":"), lower, body) == "signature mismatch"
    assert verify("POST", "127.0.0.1:9", path, lower, body + b" ") == "signature mismatch"


# -- credentials ------------------------------------------------------------------------------------
async def test_credentials_resolve_off_the_loop_and_refresh_ahead_of_expiry():
    loop_thread = threading.get_ident()
    threads: list[int] = []
    clock = [datetime.datetime.now(datetime.UTC)]
    issued = iter(range(1, 10))

    def refresh() -> dict[str, str]:
        threads.append(threading.get_ident())
        expiry = (clock[0] + datetime.timedelta(minutes=60)).isoformat()
        return {"access_key": f"AKID{next(issued)}", "secret_key": "s", "token": "t", "expiry_time": expiry}

    def resolve() -> RefreshableCredentials:
        threads.append(threading.get_ident())
        return RefreshableCredentials("AKID0", "s", "t", clock[0] + datetime.timedelta(minutes=60), refresh,
                                      "test", time_fetcher=lambda: clock[0])

    creds = AwsCredentials(resolve=resolve)
    assert (await creds.get()).access_key == "AKID0"
    clock[0] += datetime.timedelta(minutes=50)  # 10 minutes left: refreshed in the background
    assert (await creds.get()).access_key == "AKID0"  # the current ones still sign meanwhile
    for _ in range(200):
        if (await creds.get()).access_key == "AKID1":
            break
        await asyncio.sleep(0.01)
    assert (await creds.get()).access_key == "AKID1"
    clock[0] += datetime.timedelta(minutes=59, seconds=30)  # 30 s left: the request waits for the refresh
    assert (await creds.get()).access_key == "AKID2"
    assert len(threads) == 3 and loop_thread not in threads
    await creds.close()


def test_embedding_bodies():
    assert embed.requests("titan", {"input": ["a", "b"], "dimensions": 256}) == [
        {"inputText": "a", "dimensions": 256}, {"inputText": "b", "dimensions": 256}]
    bodies = embed.requests("cohere", {"input": [str(i) for i in range(100)]})
    assert [len(b["texts"]) for b in bodies] == [96, 4] and bodies[0]["input_type"] == "search_document"
    assert embed.family("us.cohere.embed-english-v3") == "cohere" and embed.family("amazon.nova-pro-v1:0") is None
    with pytest.raises(GatewayError):
        embed.texts({"input": [[1, 2, 3]]})


# -- policy ---------------------------------------------------------------------------------------------
def test_example_policy_loads_with_only_aws_credentials_and_builds_the_provider(monkeypatch):
    from pathlib import Path

    from gateway.policy.loader import load_policy
    from gateway.providers.registry import create_provider

    path = Path(__file__).resolve().parents[1] / "policies" / "bedrock.yaml"
    policy = load_policy(str(path), env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    provider = create_provider(policy.providers["bedrock"])
    assert provider.url("anthropic.claude-3-5-haiku-20241022-v1:0", "converse") == (
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse")


def test_region_is_required_and_base_url_overrides_the_endpoint():
    from gateway.policy.model import ProviderSpec
    from gateway.providers.bedrock import BedrockOptions, BedrockProvider

    with pytest.raises(ValueError, match=r"providers.aws.region: required"):
        BedrockProvider(ProviderSpec(name="aws", type="bedrock", options=BedrockOptions()))
    vpc = BedrockProvider(ProviderSpec(name="aws", type="bedrock", base_url="https://vpce-1.example.com/",
                                       options=BedrockOptions(region="eu-west-1")))
    assert vpc.url("m", "invoke") == "https://vpce-1.example.com/model/m/invoke" and vpc.region == "eu-west-1"
