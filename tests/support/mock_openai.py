"""A real OpenAI-compatible upstream on loopback, scriptable to misbehave.

Each request takes the next scripted ``Fault`` (or the default): a status with an error body,
a delay, a connection reset, a black hole (never answers), a stream cut after N chunks, slow chunks.
It records every request and counts streams the client (the gateway) abandoned.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import time
from collections import deque
from dataclasses import dataclass, field

import orjson
from aiohttp import web


@dataclass
class Fault:
    status: int = 200
    delay_s: float = 0.0  # before the headers
    reset: bool = False  # drop the connection without answering
    black_hole: bool = False  # never answer
    cut_after: int | None = None  # stream: drop the connection after this many chunks
    chunk_delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # raw body for error statuses
    no_done: bool = False  # stream ends cleanly but without [DONE]


def answer_for(body: dict) -> str:
    msgs = body.get("messages") or []
    last = next((m.get("content") for m in reversed(msgs) if m.get("role") == "user"), None)
    source = last if isinstance(last, str) else str(body.get("prompt", ""))
    text = f"Echo: {source}"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int):
        text = " ".join(text.split(" ")[:limit])
    return text


def usage_for(body: dict, text: str) -> dict:
    """Exact, reproducible usage: words of all message contents, words of the answer."""
    msgs = body.get("messages") or []
    prompt = sum(len(str(m.get("content", "")).split()) for m in msgs) + len(str(body.get("prompt", "")).split())
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class MockOpenAI:
    def __init__(self, name: str = "mock") -> None:
        self.name = name
        self.requests: list[dict] = []
        self.raw: list[bytes] = []  # each request body's bytes as they arrived
        self.headers: list[dict[str, str]] = []
        self.script: deque[Fault] = deque()
        self.default = Fault()
        self.cancelled = 0
        self.completed_streams = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> int:
        return len(self.requests)

    def push(self, *faults: Fault) -> None:
        self.script.extend(faults)

    async def start(self) -> MockOpenAI:
        app = web.Application(client_max_size=64 * 1024**2)  # as real upstreams: multi-MB prompts
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _prelude(self, request: web.Request) -> tuple[dict, Fault]:
        raw = await request.read()
        body = orjson.loads(raw)
        self.raw.append(raw)
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        fault = self.script.popleft() if self.script else self.default
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.black_hole:
            await asyncio.sleep(3600)
        if fault.reset:
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError
        return body, fault

    def _error(self, fault: Fault) -> web.Response:
        body = fault.body or orjson.dumps(
            {"error": {"message": f"{self.name} says {fault.status}", "type": "server_error", "param": None,
                       "code": None}})
        return web.Response(status=fault.status, body=body, content_type="application/json", headers=fault.headers)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body, fault = await self._prelude(request)
            if fault.status != 200:
                return self._error(fault)
            chat = request.path.endswith("chat/completions")
            text = answer_for(body)
            if body.get("stream"):
                return await self._stream(request, body, fault, text, chat)
            base = {"id": "cmpl-mock", "created": int(time.time()), "model": body.get("model")}
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                data = {**base, "object": "chat.completion", "choices": [choice]}
            else:
                choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                data = {**base, "object": "text_completion", "choices": [choice]}
            data["usage"] = usage_for(body, text)
            return web.Response(body=orjson.dumps(data), content_type="application/json", headers={
                "x-upstream": self.name})
        finally:
            self.in_flight -= 1

    async def _stream(self, request: web.Request, body: dict, fault: Fault, text: str,
                      chat: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "chunk-mock", "created": int(time.time()), "model": body.get("model"),
                "object": "chat.completion.chunk" if chat else "text_completion"}
        words = text.split(" ")
        try:
            for i, word in enumerate(words):
                if fault.cut_after is not None and i >= fault.cut_after:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                piece = word if i == 0 else " " + word
                choice = ({"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat
                          else {"index": 0, "text": piece, "finish_reason": None})
                await resp.write(b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n")
                if fault.chunk_delay_s:
                    await asyncio.sleep(fault.chunk_delay_s)
            last = ({"index": 0, "delta": {}, "finish_reason": "stop"} if chat
                    else {"index": 0, "text": "", "finish_reason": "stop"})
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [last]}) + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {**base, "choices": [], "usage": usage_for(body, text)}
                await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
            if not fault.no_done:
                await resp.write(b"data: [DONE]\n\n")
            self.completed_streams += 1
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled += 1
            raise
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        body, fault = await self._prelude(request)
        if fault.status != 200:
            return self._error(fault)
        items = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, _item in enumerate(items):
            vec = [0.1 * (i + 1), 0.2, 0.3]
            emb = (base64.b64encode(struct.pack("<3f", *vec)).decode()
                   if body.get("encoding_format") == "base64" else vec)
            data.append({"object": "embedding", "index": i, "embedding": emb})
        usage = {"prompt_tokens": len(items), "total_tokens": len(items)}
        return web.Response(body=orjson.dumps({"object": "list", "data": data, "model": body.get("model"),
                                               "usage": usage}), content_type="application/json")


@contextlib.asynccontextmanager
async def running_mock(name: str = "mock"):  # noqa: ANN201
    mock = await MockOpenAI(name).start()
    try:
        yield mock
    finally:
        await mock.stop()
