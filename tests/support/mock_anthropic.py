"""A loopback Anthropic Messages API: real HTTP, Anthropic's wire format, scriptable failures.

Answers ``POST /v1/messages`` like Anthropic does: a whole ``message`` JSON, or an SSE stream with
``event:`` lines (message_start, content_block_start, ping, content_block_delta, content_block_stop,
message_delta with usage, message_stop). It checks what Anthropic checks first (``x-api-key``,
``anthropic-version``, ``max_tokens``, alternating user/assistant roles; ``system`` messages among them
are accepted and are no turn, as Anthropic accepts them from Claude Code) and records every request.

    async with MockAnthropic() as server:           # or the ``mock_anthropic`` fixture
        server.push(Reply(text="hi"), ErrorReply.overloaded())
        ... ProviderSpec(type="anthropic", base_url=server.url, api_key=server.api_key) ...
        server.requests[0]["system"], server.headers[0]["x-api-key"]

Like ``MockOpenAI``: ``start()`` returns the server and ``stop()`` ends it (so the harness's
``ServerThread.call`` can run it), ``push`` scripts replies, ``requests``/``headers``/``paths`` record
each call (headers are case-insensitive).

Unscripted requests get ``Mock answer to: <last user text>`` (respecting ``max_tokens`` and
``stop_sequences``), so identical requests give identical answers, as in the built-in mock provider.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict

from tests.support.loopback import LoopbackServer


@dataclass
class Reply:
    """One scripted answer; sent as JSON or SSE depending on the request's ``stream`` flag."""

    text: str | None = None  # None: the default echo answer
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (name, input)
    thinking: str | None = None  # a leading thinking block (adapters should skip it)
    stop_reason: str | None = None  # default: tool_use with tool calls, else end_turn
    usage: dict[str, int] | None = None  # overrides the estimated usage fields
    delay_s: float = 0.0  # before the response headers
    event_delay_s: float = 0.0  # between stream events
    chunk_chars: int = 4  # text per text_delta
    cut_after: int | None = None  # stream: stop after this many events...
    cut: Literal["abort", "eof"] = "abort"  # ...by resetting the connection, or by ending it cleanly
    error_after: int | None = None  # stream: send an ``event: error`` (overloaded) after this many events


@dataclass
class ErrorReply:
    status: int
    type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def overloaded(cls) -> ErrorReply:
        return cls(529, "overloaded_error", "Overloaded")

    @classmethod
    def rate_limited(cls, retry_after: str = "7") -> ErrorReply:
        return cls(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            {"retry-after": retry_after},
        )

    @classmethod
    def bad_request(cls, message: str = "messages: roles must alternate") -> ErrorReply:
        return cls(400, "invalid_request_error", message)


@dataclass
class RawReply:
    """Any status and bytes, e.g. a proxy's HTML 502 or a malformed 200."""

    status: int
    body: bytes
    content_type: str = "application/json"


Scripted = Reply | ErrorReply | RawReply


class MockAnthropic(LoopbackServer):
    def __init__(self, api_key: str = "sk-ant-mock-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.requests: list[Any] = []  # parsed JSON bodies (the raw text if a body wasn't JSON)
        self.headers: list[CIMultiDict[str]] = []
        self.paths: list[str] = []  # path and query string
        self.script: deque[Scripted] = deque()
        self.default: Scripted = Reply()

    @property
    def url(self) -> str:
        """The base URL to configure; the provider appends ``/v1/messages``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def calls(self) -> int:
        return len(self.requests)

    def push(self, *replies: Scripted) -> None:
        """Answer the next requests with these, in order; then fall back to ``default``."""
        self.script.extend(replies)

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self._handle)
        return app




    # --- request handling ----------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.text()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw
        headers = CIMultiDict(request.headers)
        self.requests.append(body)
        self.headers.append(headers)
        self.paths.append(request.path_qs)
        problem = self._check(headers, body)
        reply = problem or (self.script.popleft() if self.script else self.default)
        if isinstance(reply, Reply) and reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if isinstance(reply, ErrorReply):
            return _error(reply)
        if isinstance(reply, RawReply):
            return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
        message = _message(len(self.requests), body, reply)
        if body.get("stream"):
            return await _stream(request, message, reply)
        return web.json_response(message, dumps=lambda o: orjson.dumps(o).decode(), headers=_ids(message))

    def _check(self, headers: CIMultiDict[str], body: Any) -> ErrorReply | None:
        """The validation Anthropic does before any model work, with its messages."""
        if headers.get("x-api-key") != self.api_key:
            return ErrorReply(401, "authentication_error", "invalid x-api-key")
        if "anthropic-version" not in headers:
            return ErrorReply(400, "invalid_request_error", "anthropic-version: header is required")
        if not isinstance(body, dict):
            return ErrorReply(400, "invalid_request_error", "There was an error parsing the body")
        if not isinstance(body.get("max_tokens"), int):
            return ErrorReply(400, "invalid_request_error", "max_tokens: Field required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return ErrorReply(400, "invalid_request_error", "messages: at least one message is required")
        previous = None
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant", "system"):
                return ErrorReply(
                    400, "invalid_request_error",
                    f"messages.{i}.role: Input should be 'user', 'assistant' or 'system'"
                )
            if msg["role"] == "system":  # mid-conversation system text (Claude Code sends it): not a turn
                continue
            if msg["role"] == previous:
                return ErrorReply(
                    400, "invalid_request_error", "messages: roles must alternate between user and assistant"
                )
            previous = msg["role"]
        return None


def _error(reply: ErrorReply) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": reply.type, "message": reply.message},
        "request_id": "req_mock_err",
    }
    return web.Response(
        status=reply.status, body=orjson.dumps(body), content_type="application/json", headers=reply.headers
    )


def _ids(message: dict[str, Any]) -> dict[str, str]:
    return {"request-id": "req_" + message["id"][4:]}


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for msg in reversed(messages):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        if texts:
            return " ".join(texts)
    return ""


def _message(n: int, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """The whole Anthropic message this reply stands for."""
    text = (
        reply.text if reply.text is not None else f"Mock answer to: {_last_user_text(body['messages'])[:200]}"
    )
    stop_reason = reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")
    stop_sequence = None
    for seq in body.get("stop_sequences") or []:
        if seq and seq in text:
            text, stop_reason, stop_sequence = text[: text.index(seq)], "stop_sequence", seq
    if len(text) > body["max_tokens"] * 4:
        text, stop_reason = text[: body["max_tokens"] * 4], "max_tokens"
    content: list[dict[str, Any]] = []
    if reply.thinking:
        content.append({"type": "thinking", "thinking": reply.thinking, "signature": "c2lnbmF0dXJl"})
    if text:
        content.append({"type": "text", "text": text})
    for i, (name, args) in enumerate(reply.tool_calls):
        content.append({"type": "tool_use", "id": f"toolu_mock_{n}_{i}", "name": name, "input": args})
    usage = {
        "input_tokens": max(1, len(orjson.dumps(body["messages"])) // 4),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": max(1, (len(text) + len(orjson.dumps(reply.tool_calls))) // 4),
        **(reply.usage or {}),
    }
    return {
        "id": f"msg_mock_{n:04d}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage,
    }


def _events(message: dict[str, Any], chunk_chars: int) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events Anthropic sends for ``message``, in order."""
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for index, block in enumerate(message["content"]):
        events += _block_events(index, block, chunk_chars)
        if index == 0:
            events.append(("ping", {"type": "ping"}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    events.append(
        (
            "message_delta",
            {"type": "message_delta", "delta": delta, "usage": {"output_tokens": usage["output_tokens"]}},
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _block_events(index: int, block: dict[str, Any], size: int) -> list[tuple[str, dict[str, Any]]]:
    kind = block["type"]
    if kind == "text":
        empty, deltas = (
            {"type": "text", "text": ""},
            [{"type": "text_delta", "text": p} for p in _pieces(block["text"], size)],
        )
    elif kind == "thinking":
        empty = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [
            {"type": "thinking_delta", "thinking": block["thinking"]},
            {"type": "signature_delta", "signature": block["signature"]},
        ]
    else:
        empty = {**block, "input": {}}
        args = orjson.dumps(block["input"]).decode()
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *_pieces(args, size * 2)]]
    events = [
        ("content_block_start", {"type": "content_block_start", "index": index, "content_block": empty})
    ]
    events += [
        ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas
    ]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), max(1, size))]


async def _stream(request: web.Request, message: dict[str, Any], reply: Reply) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            **_ids(message),
        }
    )
    await resp.prepare(request)
    for i, (name, data) in enumerate(_events(message, reply.chunk_chars)):
        if i == reply.error_after:
            name, data = (
                "error",
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            )
        if i == reply.cut_after:
            if reply.cut == "abort" and request.transport is not None:
                request.transport.abort()
                return resp
            break
        await resp.write(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")
        if name == "error":
            break
        if reply.event_delay_s:
            await asyncio.sleep(reply.event_delay_s)
    await resp.write_eof()
    return resp


@pytest_asyncio.fixture
async def mock_anthropic() -> AsyncIterator[MockAnthropic]:
    """A started ``MockAnthropic`` for one test."""
    async with MockAnthropic() as server:
        yield server
