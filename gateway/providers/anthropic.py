"""Anthropic Messages API behind the OpenAI chat interface.

Requests and whole answers are translated by ``anthropic_translate``; this module owns the HTTP call
(shared timed helpers from ``openai``) and the stream translation. Anthropic streams typed events
(``message_start``, ``content_block_*``, ``message_delta``, ``message_stop``) and ends with
``message_stop`` instead of ``[DONE]``: a stream that ends without it, or an ``error`` event, is a cut.
Only the chat endpoint exists upstream; completions and embeddings get a local 400.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError, UpstreamError, invalid
from gateway.policy.model import ProviderSpec
from gateway.providers import exchange
from gateway.providers.anthropic_translate import (
    error_body,
    finish_reason,
    from_anthropic,
    to_anthropic,
    usage,
)
from gateway.providers.base import NativeAnswer, UpstreamRequest, UpstreamResponse, local_error
from gateway.providers.openai import HTTPProvider, closer, timed_read, timed_sse, upstream_headers

API_VERSION = "2023-06-01"
_BAD_SHAPE = (KeyError, TypeError, AttributeError, ValueError)  # orjson.JSONDecodeError is a ValueError


class AnthropicProvider(HTTPProvider):
    type = "anthropic"
    native_surface = "messages"

    def __init__(self, spec: ProviderSpec, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(spec)
        self._clock = clock
        base = spec.base_url.rstrip("/")
        self._url = base.removesuffix("/v1") + "/v1/messages"  # accept a base with or without /v1
        self._static_headers = {
            "content-type": "application/json",
            "anthropic-version": API_VERSION,
            **dict(spec.headers),
        }

    def key_headers(self) -> dict[str, str]:
        key = self.key.current()
        return {"x-api-key": key} if key else {}

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        if req.endpoint != "chat":
            message = f"the {req.endpoint} endpoint is not supported by {self.name} (anthropic)"
            return local_error(invalid(message, code="unsupported_endpoint"))
        try:
            payload = self._payload(req)
        except GatewayError as exc:
            return local_error(exc)
        resp, first_byte, total, deadline = await self._post(req, self._url, orjson.dumps(payload))
        out_headers = upstream_headers(resp)
        native = NativeAnswer() if req.native is not None and resp.status == 200 else None
        if req.stream and resp.status == 200:
            include_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
            translator = StreamTranslator(int(self._clock.time()), include_usage)
            events = self._events(resp, translator, first_byte, deadline, native)
            return UpstreamResponse(status=200, headers=out_headers, events=events, close=closer(resp),
                                    native=native)
        body = await timed_read(resp, self.name, deadline, total)
        if native is not None:
            native.body = body
        return UpstreamResponse(resp.status, out_headers, self._translate_body(resp.status, body), native=native)

    @staticmethod
    def _payload(req: UpstreamRequest) -> dict[str, Any]:
        """The client's own Messages body when it sent one (lossless), else the chat request translated."""
        if req.native is not None:
            return {**req.native, "model": req.body.get("model"), "stream": req.stream}
        return to_anthropic({**req.body, "stream": req.stream})

    def _translate_body(self, status: int, body: bytes) -> bytes:
        """A whole answer or an error body, in the OpenAI shape."""
        if not 200 <= status < 300:
            return error_body(status, body, self.name, *self.key.secrets())
        try:
            answer = from_anthropic(orjson.loads(body), int(self._clock.time()))
        except _BAD_SHAPE as exc:
            raise UpstreamError(
                "protocol", f"{self.name} sent a malformed message: {type(exc).__name__}"
            ) from exc
        return orjson.dumps(answer)

    def _redact(self, text: str) -> str:
        """Upstream text echoed into our errors must never carry the key."""
        for secret in self.key.secrets():
            text = text.replace(secret, "[redacted]")
        return text

    async def _events(
        self, resp: aiohttp.ClientResponse, translator: StreamTranslator, idle_s: float, deadline: float,
        native: NativeAnswer | None = None,
    ) -> AsyncIterator[bytes]:
        async with aclosing(timed_sse(resp, self.name, idle_s, deadline)) as events:
            async for event, data in events:
                if native is not None:
                    native.frames.append((b"event: " + event + b"\n" if event else b"") + b"data: " + data + b"\n\n")
                try:
                    chunks = translator.feed(event, orjson.loads(data))
                except _BAD_SHAPE as exc:
                    raise UpstreamError("protocol", f"{self.name} sent a malformed stream event") from exc
                except StreamFailed as exc:
                    raise UpstreamError(
                        "stream_cut", f"{self.name} stream failed: {self._redact(str(exc))}"
                    ) from None
                for chunk in chunks:
                    yield orjson.dumps(chunk)
                if translator.done:
                    exchange.release_when_done(resp)
                    return
        raise UpstreamError("stream_cut", f"{self.name} ended the stream without message_stop")



class StreamFailed(Exception):
    """An ``error`` event inside a 200 stream (e.g. overloaded mid-answer)."""


class StreamTranslator:
    """Anthropic stream events in, OpenAI ``chat.completion.chunk`` payloads out, one event at a time.

    Content block indexes count text and tool blocks together; OpenAI numbers tool calls on their own,
    so each ``tool_use`` block gets the next tool-call index when it starts.
    """

    def __init__(self, created: int, include_usage: bool) -> None:
        self.created = created
        self.include_usage = include_usage
        self.done = False
        self._id = ""
        self._model: str | None = None
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None
        self._tool_index: dict[int, int] = {}

    def feed(self, event: bytes | None, data: dict[str, Any]) -> list[dict[str, Any]]:
        kind = data.get("type") or (event.decode() if event else "")
        handler = getattr(self, f"_on_{kind}", None)
        return handler(data) if handler is not None else []  # ping and future event types

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def _on_message_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        msg = data["message"]
        self._id, self._model = msg["id"], msg.get("model")
        self._usage.update(msg.get("usage") or {})
        return [self._chunk({"role": "assistant", "content": ""})]

    def _on_content_block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data["content_block"]
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []  # thinking arrives in deltas; server-tool blocks have no OpenAI counterpart
        index = self._tool_index[data["index"]] = len(self._tool_index)
        call = {
            "index": index,
            "id": block["id"],
            "type": "function",
            "function": {"name": block["name"], "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _on_content_block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data["delta"]
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if delta.get("type") == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
            index = self._tool_index.get(data["index"])
            if index is None:
                return []
            call = {"index": index, "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []

    def _on_message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self._stop_reason = (data.get("delta") or {}).get("stop_reason") or self._stop_reason
        # message_delta usage is cumulative: it replaces what message_start said, field by field.
        self._usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
        return []

    def _on_message_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.done = True
        out = [self._chunk({}, finish_reason(self._stop_reason) or "stop")]
        if self.include_usage:
            out.append({**self._chunk({}), "choices": [], "usage": usage(self._usage)})
        return out

    def _on_error(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        err = data.get("error") or {}
        raise StreamFailed(f"{err.get('type', 'error')}: {err.get('message', '')}")
