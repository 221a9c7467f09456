"""A loopback Bedrock Runtime: real HTTP, AWS's wire format, SigV4 verified, scriptable failures.

Serves ``POST /model/{modelId}/converse`` (JSON), ``/converse-stream`` (the binary event stream:
messageStart, contentBlockStart/Delta/Stop, messageStop, metadata) and ``/invoke`` (Titan and Cohere
embeddings), as the Bedrock Runtime API reference describes them. Every request's signature is
recomputed with botocore from the test credentials (``aws_wire.verify``); a bad one is answered 403
``InvalidSignatureException`` like AWS does. Errors carry ``x-amzn-ErrorType`` and ``{"message"}``.

    server = await MockBedrock().start()
    server.push(Reply(tool_calls=[("get_weather", {"city": "Paris"})]), ErrorReply.throttled())
    server.requests[-1], server.raw_paths[-1], server.models[-1], server.signature_errors

A header sent twice is one value, joined with commas (as AWS canonicalizes it). ``set_cookie``, when
set, goes on every answer as ``Set-Cookie``; ``ports`` records each request's client port (one
connection, one port).

Unscripted chat requests get ``Mock answer to: <last user text>``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from tests.support.aws_wire import event_frame, exception_frame, verify
from tests.support.loopback import LoopbackServer


@dataclass
class Reply:
    text: str | None = None  # None: the default echo answer
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (name, input)
    stop_reason: str | None = None  # default: tool_use with tool calls, else end_turn
    usage: dict[str, int] | None = None  # merged over the estimated usage
    chunk_chars: int = 4
    event_delay_s: float = 0.0
    cut_after: int | None = None  # stream: reset the connection after this many frames
    exception_after: int | None = None  # stream: an exception frame after this many frames
    exception: str = "modelStreamErrorException"


@dataclass
class ErrorReply:
    status: int
    type: str
    message: str

    @classmethod
    def throttled(cls, status: int = 429) -> ErrorReply:
        return cls(status, "ThrottlingException", "Too many requests, please wait before trying again.")

    @classmethod
    def unavailable(cls) -> ErrorReply:
        return cls(503, "ServiceUnavailableException", "Service temporarily unavailable.")

    @classmethod
    def internal(cls) -> ErrorReply:
        return cls(500, "InternalServerException", "An internal server error occurred.")

    @classmethod
    def access_denied(cls) -> ErrorReply:
        return cls(403, "AccessDeniedException", "You don't have access to the model with the specified model ID.")


class MockBedrock(LoopbackServer):
    def __init__(self, region: str = "us-east-1", api_key: str | None = None) -> None:
        super().__init__()
        self.region = region
        self.api_key = api_key  # also accept this Bedrock API key (``Authorization: Bearer``)
        self.requests: list[Any] = []
        self.raw_paths: list[str] = []
        self.models: list[str] = []  # decoded model ids
        self.actions: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.signature_errors: list[str] = []
        self.ports: list[int | None] = []
        self.set_cookie: str | None = None
        self.script: deque[Reply | ErrorReply] = deque()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def calls(self) -> int:
        return len(self.requests)

    def push(self, *replies: Reply | ErrorReply) -> None:
        self.script.extend(replies)

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._cookie])
        app.router.add_post("/{tail:.*}", self._handle)
        return app

    @web.middleware
    async def _cookie(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resp = await handler(request)
        if self.set_cookie and not resp.prepared:
            resp.headers["Set-Cookie"] = self.set_cookie
        return resp

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers: dict[str, str] = {}
        for k, v in request.headers.items():
            headers[k.lower()] = f"{headers[k.lower()]},{v}" if k.lower() in headers else v
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(peer[1] if peer else None)
        parts = request.raw_path.split("?")[0].split("/")
        body: Any = orjson.loads(raw) if raw else None
        self.requests.append(body)
        self.raw_paths.append(request.raw_path)
        self.headers.append(headers)
        if headers.get("authorization", "").startswith("Bearer "):  # a Bedrock API key
            ok = self.api_key is not None and headers["authorization"] == f"Bearer {self.api_key}"
            problem = None if ok else "wrong API key"
        else:
            problem = verify(request.method, headers.get("host", ""), request.raw_path, headers, raw)
        if problem is not None:
            self.signature_errors.append(problem)
            return _error(ErrorReply(403, "InvalidSignatureException", f"The request signature we calculated "
                                     f"does not match the signature you provided ({problem})"))
        if len(parts) != 4 or parts[1] != "model":
            return _error(ErrorReply(404, "UnknownOperationException", "Unknown operation"))
        model, action = unquote(parts[2]), parts[3]
        self.models.append(model)
        self.actions.append(action)
        reply = self.script.popleft() if self.script else Reply()
        if isinstance(reply, ErrorReply):
            return _error(reply)
        if action == "invoke":
            return _embeddings(model, body)
        problem_text = _validate(body)
        if problem_text:
            return _error(ErrorReply(400, "ValidationException", problem_text))
        answer = _answer(body, reply)
        if action == "converse":
            return web.Response(body=orjson.dumps(answer), content_type="application/json",
                                headers={"x-amzn-RequestId": f"req-{self.calls}"})
        return await _stream(request, answer, reply)


def _error(reply: ErrorReply) -> web.Response:
    return web.Response(status=reply.status, body=orjson.dumps({"message": reply.message}),
                        content_type="application/json",
                        headers={"x-amzn-ErrorType": f"{reply.type}:http://internal.amazon.com/coral/com.amazon.bedrock/"})


def _validate(body: Any) -> str | None:
    """What Converse checks before any model work."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return "The messages field is required and must not be empty."
    if messages[0].get("role") != "user":
        return "A conversation must start with a user message."
    for i, msg in enumerate(messages):
        if i and msg.get("role") == messages[i - 1].get("role"):
            return "A conversation must alternate between user and assistant roles."
        uses_tools = any("toolUse" in b or "toolResult" in b for b in msg.get("content") or [])
        if uses_tools and "toolConfig" not in body:
            return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
    return None


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for msg in reversed(messages):
        texts = [b["text"] for b in msg["content"] if msg["role"] == "user" and "text" in b]
        if texts:
            return " ".join(texts)
    return ""


def _answer(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    text = reply.text if reply.text is not None else f"Mock answer to: {_last_user_text(body['messages'])[:200]}"
    stop = reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")
    for seq in (body.get("inferenceConfig") or {}).get("stopSequences") or []:
        if seq and seq in text:
            text, stop = text[: text.index(seq)], "stop_sequence"
    content: list[dict[str, Any]] = [{"text": text}] if text else []
    for i, (name, args) in enumerate(reply.tool_calls):
        content.append({"toolUse": {"toolUseId": f"tooluse_mock_{i}", "name": name, "input": args}})
    usage = {"inputTokens": max(1, len(orjson.dumps(body["messages"])) // 4),
             "outputTokens": max(1, (len(text) + len(orjson.dumps(reply.tool_calls))) // 4), **(reply.usage or {})}
    usage["totalTokens"] = sum(usage.get(k, 0) for k in ("inputTokens", "outputTokens", "cacheReadInputTokens",
                                                           "cacheWriteInputTokens"))
    return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop,
            "usage": usage, "metrics": {"latencyMs": 1}}


def _frames(answer: dict[str, Any], size: int) -> list[bytes]:
    """The ConverseStream events for ``answer``, in order."""
    frames = [event_frame("messageStart", {"role": "assistant"})]
    for index, block in enumerate(answer["output"]["message"]["content"]):
        if "toolUse" in block:
            use = block["toolUse"]
            start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
            frames.append(event_frame("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            args = orjson.dumps(use["input"]).decode()
            deltas = [{"toolUse": {"input": args[i:i + size * 2]}} for i in range(0, len(args), size * 2)]
        else:
            deltas = [{"text": block["text"][i:i + size]} for i in range(0, len(block["text"]), size)]
        frames += [event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": d}) for d in deltas]
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
    frames.append(event_frame("messageStop", {"stopReason": answer["stopReason"]}))
    frames.append(event_frame("metadata", {"usage": answer["usage"], "metrics": {"latencyMs": 1}}))
    return frames


async def _stream(request: web.Request, answer: dict[str, Any], reply: Reply) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "application/vnd.amazon.eventstream",
                                       "x-amzn-RequestId": "req-stream"})
    await resp.prepare(request)
    for i, frame in enumerate(_frames(answer, reply.chunk_chars)):
        if i == reply.cut_after and request.transport is not None:
            request.transport.abort()
            return resp
        if i == reply.exception_after:
            await resp.write(exception_frame(reply.exception, "The model stream failed."))
            break
        await resp.write(frame)
        if reply.event_delay_s:
            await asyncio.sleep(reply.event_delay_s)
    await resp.write_eof()
    return resp


def vector(text: str, dims: int) -> list[float]:
    """A deterministic unit-ish vector for ``text``."""
    seed = hashlib.sha256(text.encode()).digest() * (dims // 32 + 1)
    return [round((b - 128) / 128, 4) for b in seed[:dims]]


def _embeddings(model: str, body: dict[str, Any]) -> web.Response:
    if "titan-embed" in model:
        if not isinstance(body.get("inputText"), str):
            return _error(ErrorReply(400, "ValidationException", "inputText is required"))
        text = body["inputText"]
        answer = {"embedding": vector(text, body.get("dimensions") or 1024),
                  "inputTextTokenCount": len(text.split())}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")
    texts = body.get("texts")
    if not isinstance(texts, list) or body.get("input_type") not in ("search_document", "search_query",
                                                                      "classification", "clustering"):
        return _error(ErrorReply(400, "ValidationException", "texts and a valid input_type are required"))
    answer = {"embeddings": [vector(t, 1024) for t in texts], "id": "emb-1",
              "response_type": "embeddings_floats", "texts": texts}
    tokens = str(sum(len(t.split()) for t in texts))
    return web.Response(body=orjson.dumps(answer), content_type="application/json",
                        headers={"X-Amzn-Bedrock-Input-Token-Count": tokens})
