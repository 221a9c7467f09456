"""A loopback OpenAI Responses API (``POST /v1/responses``): real HTTP, the Responses wire format, faults.

Non-stream requests get a whole ``response`` object; ``stream: true`` gets the SSE event sequence
(``event:`` + ``data:`` lines, each with a ``sequence_number``): response.created, response.in_progress,
response.output_item.added, then for a message response.content_part.added, response.output_text.delta...,
response.output_text.done, response.content_part.done, or for a call response.function_call_arguments.delta...,
response.function_call_arguments.done; then response.output_item.done and response.completed
(response.incomplete when ``max_output_tokens`` cut the text).

What it answers, unless scripted: one ``function_call`` to the first function tool when the request has
function tools and its last input item is not a ``function_call_output`` (arguments fill the tool's
required parameters); otherwise the message ``Echo: <last user text>`` or ``Tool output: <output>``.

    async with MockResponses() as server:          # or the ``mock_responses`` fixture
        server.push(Fault(status=500), Fault(cut_after=3), Fault(text="scripted"))
        client = AsyncOpenAI(base_url=server.url, api_key="sk-test")
        server.requests[0]["input"], server.headers[0]["authorization"]

Like ``MockOpenAI``: each request takes the next scripted ``Fault`` (or ``default``); ``requests``,
``headers`` and ``paths`` record every call; ``cancelled``/``completed_streams`` count stream endings.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict

from tests.support.loopback import LoopbackServer


@dataclass
class Fault:
    """How to answer one request: misbehaviour, or scripted content."""

    status: int = 200  # != 200: an OpenAI error body with this status
    error_type: str = "server_error"
    error_code: str | None = None
    body: bytes | None = None  # raw body for an error status, instead of the OpenAI error JSON
    headers: dict[str, str] = field(default_factory=dict)  # e.g. retry-after on a 429
    delay_s: float = 0.0  # before the headers
    reset: bool = False  # drop the connection without answering
    hang: bool = False  # never answer
    cut_after: int | None = None  # stream: drop the connection after this many events
    error_after: int | None = None  # stream: send an ``error`` event after this many events, then end
    event_delay_s: float = 0.0  # stream: pause between events
    chunk_chars: int = 6  # stream: text (or arguments) per delta
    text: str | None = None  # scripted message text
    call: tuple[str, dict[str, Any]] | None = None  # scripted function call (name, arguments)


def _input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = body.get("input")
    if isinstance(items, str):
        return [{"type": "message", "role": "user", "content": items}]
    return [i for i in items or [] if isinstance(i, dict)]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = [c.get("text", "") for c in content or [] if isinstance(c, dict) and "text" in c]
    return " ".join(parts)


def answer_for(body: dict[str, Any]) -> str:
    """The default answer text: echo the last user message, or report the last tool output."""
    items = _input_items(body)
    if items and items[-1].get("type") == "function_call_output":
        return f"Tool output: {_text_of(items[-1].get('output'))}"
    for item in reversed(items):
        if item.get("role") == "user" and item.get("type", "message") == "message":
            return f"Echo: {_text_of(item.get('content'))}"
    return "Echo: "


def call_for(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The default function call: the first function tool, unless the input ends in a tool output."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    items = _input_items(body)
    if not tools or (items and items[-1].get("type") == "function_call_output"):
        return None
    params = tools[0].get("parameters") or {}
    props = params.get("properties") or {}
    samples = {"string": "mock", "integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}
    args = {name: samples.get((props.get(name) or {}).get("type")) for name in params.get("required") or []}
    return tools[0]["name"], args


def usage_for(body: dict[str, Any], output_words: int) -> dict[str, Any]:
    """Reproducible usage: words of the instructions and input texts, words of the output."""
    texts = [str(body.get("instructions") or "")]
    texts += [_text_of(i.get("content")) + " " + _text_of(i.get("output")) for i in _input_items(body)]
    prompt = sum(len(t.split()) for t in texts)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_words,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output_words,
    }


class MockResponses(LoopbackServer):
    runner_options = {"handler_cancellation": True}

    def __init__(self, name: str = "responses", api_key: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.api_key = api_key  # when set, requests must carry ``Authorization: Bearer <key>``
        self.requests: list[Any] = []  # parsed JSON bodies (the raw text if a body wasn't JSON)
        self.headers: list[CIMultiDict[str]] = []
        self.paths: list[str] = []
        self.script: deque[Fault] = deque()
        self.default = Fault()
        self.cancelled = 0
        self.completed_streams = 0

    @property
    def url(self) -> str:
        """The base URL for an OpenAI client (it appends ``/responses``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> int:
        return len(self.requests)

    def push(self, *faults: Fault) -> None:
        """Answer the next requests with these, in order; then fall back to ``default``."""
        self.script.extend(faults)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/responses", self._handle)
        app.router.add_post("/v1/chat/completions", self._chat)  # as OpenAI serves both
        return app




    # --- request handling ----------------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.Response:
        """A plain, non-streamed chat answer quoting the last message (enough for translated turns)."""
        body = orjson.loads(await request.read())
        self.requests.append(body)
        self.headers.append(CIMultiDict(request.headers))
        self.paths.append(request.path_qs)
        last = str((body.get("messages") or [{}])[-1].get("content"))
        answer = {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": 0,
                  "model": body.get("model"), "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                  "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": f"Echo: {last}"}}]}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        headers = CIMultiDict(request.headers)
        self.requests.append(body)
        self.headers.append(headers)
        self.paths.append(request.path_qs)
        n = len(self.requests)
        problem = self._check(headers, body)
        if problem is not None:
            return problem
        fault = self.script.popleft() if self.script else self.default
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.hang:
            await asyncio.sleep(3600)
        if fault.reset:
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError
        if fault.status != 200:
            return self._error(fault.status, f"{self.name} says {fault.status}", fault.error_type,
                               fault.error_code, fault.headers, fault.body)
        response = _response(n, body, fault)
        if body.get("stream"):
            return await self._stream(request, response, fault)
        return web.Response(body=orjson.dumps(response), content_type="application/json",
                            headers={"x-request-id": f"req_mock_{n}", **fault.headers})

    def _check(self, headers: CIMultiDict[str], body: Any) -> web.Response | None:
        """The checks OpenAI makes before any model work."""
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if not isinstance(body, dict):
            return self._error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        if not body.get("model"):
            return self._error(400, "Missing required parameter: 'model'.", "invalid_request_error",
                               "missing_required_parameter", param="model")
        if not isinstance(body.get("input"), str | list):
            return self._error(400, "Missing required parameter: 'input'.", "invalid_request_error",
                               "missing_required_parameter", param="input")
        return None

    @staticmethod
    def _error(status: int, message: str, type_: str, code: str | None = None,
               headers: dict[str, str] | None = None, raw: bytes | None = None,
               param: str | None = None) -> web.Response:
        body = raw or orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

    async def _stream(self, request: web.Request, response: dict[str, Any], fault: Fault) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8",
                                           "cache-control": "no-cache", **fault.headers})
        await resp.prepare(request)
        try:
            for seq, event in enumerate(_events(response, fault.chunk_chars)):
                if seq == fault.cut_after:
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                if seq == fault.error_after:
                    event = {"type": "error", "code": "server_error", "param": None,
                             "message": f"{self.name}: stream failed"}
                event = {**event, "sequence_number": seq}
                await resp.write(b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")
                if seq == fault.error_after:
                    break
                if fault.event_delay_s:
                    await asyncio.sleep(fault.event_delay_s)
            await resp.write_eof()
            self.completed_streams += 1
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled += 1
            raise
        return resp


def _response(n: int, body: dict[str, Any], fault: Fault) -> dict[str, Any]:
    """The finished Response object for this request."""
    call = fault.call if fault.call is not None else (None if fault.text is not None else call_for(body))
    status, incomplete = "completed", None
    if call is not None:
        name, args = call
        arguments = orjson.dumps(args).decode()
        item: dict[str, Any] = {"id": f"fc_mock_{n:04d}", "type": "function_call", "status": "completed",
                                "call_id": f"call_mock_{n:04d}", "name": name, "arguments": arguments}
        out_words = max(1, len(arguments) // 4)
    else:
        text = fault.text if fault.text is not None else answer_for(body)
        limit = body.get("max_output_tokens")
        if isinstance(limit, int) and len(text.split(" ")) > limit:
            text = " ".join(text.split(" ")[:limit])
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        item = {"id": f"msg_mock_{n:04d}", "type": "message", "role": "assistant", "status": status,
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
        out_words = len(text.split())
    now = int(time.time())
    return {
        "id": f"resp_mock_{n:04d}",
        "object": "response",
        "created_at": now,
        "status": status,
        "completed_at": now if status == "completed" else None,
        "background": False,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": body["model"],
        "output": [item],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage_for(body, out_words),
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _events(response: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """The stream events (without sequence numbers) that build up ``response``."""
    pending = {**response, "status": "in_progress", "output": [], "usage": None, "completed_at": None,
               "incomplete_details": None}
    item = response["output"][0]
    ids = {"item_id": item["id"], "output_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
    ]
    if item["type"] == "function_call":
        args = item["arguments"]
        events.append({"type": "response.output_item.added", "output_index": 0,
                       "item": {**item, "status": "in_progress", "arguments": ""}})
        events += [{"type": "response.function_call_arguments.delta", **ids, "delta": p} for p in _pieces(args, size)]
        events.append({"type": "response.function_call_arguments.done", **ids, "name": item["name"],
                       "arguments": args})
    else:
        part = item["content"][0]
        text = part["text"]
        ids["content_index"] = 0
        events.append({"type": "response.output_item.added", "output_index": 0,
                       "item": {**item, "status": "in_progress", "content": []}})
        events.append({"type": "response.content_part.added", **ids, "part": {**part, "text": ""}})
        events += [{"type": "response.output_text.delta", **ids, "delta": p, "logprobs": []}
                   for p in _pieces(text, size)]
        events.append({"type": "response.output_text.done", **ids, "text": text, "logprobs": []})
        events.append({"type": "response.content_part.done", **ids, "part": part})
    events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
    final = "response.completed" if response["status"] == "completed" else "response.incomplete"
    events.append({"type": final, "response": response})
    return events


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), max(1, size))]


@pytest_asyncio.fixture
async def mock_responses() -> AsyncIterator[MockResponses]:
    """A started ``MockResponses`` for one test."""
    async with MockResponses() as server:
        yield server
