"""``MockOpenAI`` that can also answer chat requests with scripted content: text or tool calls.

    mock = servers.call(ScriptedOpenAI("upstream").start())
    mock.say(Said(calls=[("get_weather", {"city": "Paris"})]), Said(text='{"ok": true}'))

Each chat request takes the next scripted ``Said`` (whole JSON or a stream, as the request asks);
once the script is empty it answers like ``MockOpenAI`` (the echo). ``Fault``s pushed with ``push``
still apply first: a request with an error fault gets the error and leaves the script alone.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support.mock_openai import MockOpenAI, usage_for


@dataclass
class Said:
    """One scripted chat answer."""

    text: str | None = None
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (function name, arguments)
    chunk_chars: int = 5  # stream: text (or arguments) per chunk


class ScriptedOpenAI(MockOpenAI):
    def __init__(self, name: str = "scripted") -> None:
        super().__init__(name)
        self.said: deque[Said] = deque()

    def say(self, *answers: Said) -> None:
        self.said.extend(answers)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not self.said or not request.path.endswith("chat/completions"):
            return await super()._handle(request)
        body, fault = await self._prelude(request)
        if fault.status != 200:
            return self._error(fault)
        said = self.said.popleft()
        base = {"id": f"chatcmpl-{self.name}-{self.calls}", "created": int(time.time()), "model": body.get("model")}
        usage = usage_for(body, said.text or orjson.dumps(said.calls).decode())
        if body.get("stream"):
            return await self._stream_said(request, body, said, base, usage)
        calls = [_call(self.calls, i, name, args) for i, (name, args) in enumerate(said.calls)]
        message: dict[str, Any] = {"role": "assistant", "content": said.text}
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}
        data = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        return web.json_response(data, dumps=lambda o: orjson.dumps(o).decode())

    async def _stream_said(self, request: web.Request, body: dict, said: Said, base: dict,
                           usage: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        base = {**base, "object": "chat.completion.chunk"}
        size = max(1, said.chunk_chars)

        async def send(delta: dict, finish: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n")

        await send({"role": "assistant", "content": ""})
        text = said.text or ""
        for i in range(0, len(text), size):
            await send({"content": text[i:i + size]})
        for index, (name, args) in enumerate(said.calls):
            call = _call(self.calls, index, name, {})
            call["function"]["arguments"] = ""
            await send({"tool_calls": [{"index": index, **call}]})
            raw = orjson.dumps(args).decode()
            for i in range(0, len(raw), size):
                await send({"tool_calls": [{"index": index, "function": {"arguments": raw[i:i + size]}}]})
        await send({}, "tool_calls" if said.calls else "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        self.completed_streams += 1
        return resp


def _call(n: int, index: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"call_scripted_{n}_{index}", "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(args).decode()}}
