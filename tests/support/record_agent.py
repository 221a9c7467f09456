"""Record what real coding agents send: a loopback server that logs every request and answers plausibly.

    python3 -m tests.support.record_agent --port 8765 --log /tmp/calls.jsonl [--proxy-port 8766]

Each request becomes one JSON line: method, path, query, headers, body (parsed JSON, else text).
Answers: ``/v1/messages`` a valid Anthropic message (SSE when ``stream`` is true), ``/v1/responses`` a
valid OpenAI Responses SSE stream (or a whole Response when ``stream`` is false),
With ``--tool-turn`` a main turn that offers a shell tool (Claude Code's ``Bash``, Codex's ``exec_command``)
and does not end in a tool result is answered with one ``ls`` call, so the agent's follow-up is recorded too.
``/v1/messages/count_tokens`` a token count, ``/v1/models`` and ``/models`` an empty-ish list, anything
else ``200 {}``. With ``--proxy-port`` it also runs a refusing HTTP(S) proxy that logs the host of every
request that would have left the machine (point ``HTTPS_PROXY``/``HTTP_PROXY`` at it).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

ANSWER = "I see these files: README.md."


class Recorder:
    """Appends each received request to a JSON-lines log."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def write(self, entry: dict[str, Any]) -> None:
        entry["t"] = round(time.time(), 3)
        with self.log.open("ab") as fh:
            fh.write(orjson.dumps(entry) + b"\n")

    async def record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        self.write({
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": {str(k): v for k, v in request.headers.items()},
            "body": body,
        })
        return body


def _sse(event: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


async def _send_sse(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await resp.prepare(request)
    for chunk in events:
        await resp.write(chunk)
    await resp.write_eof()
    return resp


def anthropic_wants_tool(body: dict[str, Any]) -> bool:
    """True when ``body`` offers ``Bash`` and its last message is not a tool result."""
    if not any(t.get("name") == "Bash" for t in body.get("tools") or []):
        return False
    content = (body.get("messages") or [{}])[-1].get("content")
    return not (isinstance(content, list) and any(b.get("type") == "tool_result" for b in content))


def anthropic_message(body: dict[str, Any], tool_turn: bool = False) -> dict[str, Any]:
    """A finished Anthropic message answering ``body``: text, or one ``Bash ls`` call."""
    content: list[dict[str, Any]] = [{"type": "text", "text": ANSWER}]
    if tool_turn and anthropic_wants_tool(body):
        content = [{"type": "tool_use", "id": "toolu_rec_" + uuid.uuid4().hex[:12], "name": "Bash",
                    "input": {"command": "ls", "description": "List files"}}]
    return {
        "id": "msg_rec_" + uuid.uuid4().hex[:16],
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "claude"),
        "content": content,
        "stop_reason": "tool_use" if content[0]["type"] == "tool_use" else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": 9, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0},
    }


def anthropic_events(message: dict[str, Any]) -> list[bytes]:
    """The SSE events for ``message`` (one text or tool_use block)."""
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    block = message["content"][0]
    if block["type"] == "text":
        empty, piece, text = {"type": "text", "text": ""}, "text_delta", block["text"]
    else:
        empty, piece, text = {**block, "input": {}}, "input_json_delta", orjson.dumps(block["input"]).decode()
    field = "text" if piece == "text_delta" else "partial_json"
    return [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": empty}),
        _sse("ping", {"type": "ping"}),
        *[_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": piece, field: text[i:i + 8]}})
          for i in range(0, len(text), 8)],
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                               "usage": {"output_tokens": message["usage"]["output_tokens"]}}),
        _sse("message_stop", {"type": "message_stop"}),
    ]


def openai_response(body: dict[str, Any], status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    """A Response object echoing the request's settings."""
    done = status == "completed"
    return {
        "id": "resp_rec",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": body.get("model", "gpt"),
        "output": output,
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "reasoning": body.get("reasoning"),
        "store": body.get("store", False),
        "error": None,
        "incomplete_details": None,
        "usage": {
            "input_tokens": 100,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 9,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 109,
        } if done else None,
    }


def responses_wants_tool(body: dict[str, Any]) -> bool:
    """True when ``body`` offers a top-level ``exec_command`` function and does not end in its output."""
    if not any(t.get("name") == "exec_command" for t in body.get("tools") or []):
        return False
    items = body.get("input") or [{}]
    return not (isinstance(items, list) and items[-1].get("type") == "function_call_output")


def responses_tool_events(body: dict[str, Any]) -> list[bytes]:
    """The Responses SSE sequence for one ``exec_command ls`` function call."""
    args = orjson.dumps({"cmd": "ls"}).decode()
    item = {"id": "fc_rec_1", "type": "function_call", "status": "in_progress", "call_id": "call_rec_1",
            "name": "exec_command", "arguments": ""}
    final_item = {**item, "status": "completed", "arguments": args}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": openai_response(body, "in_progress", [])},
        {"type": "response.in_progress", "response": openai_response(body, "in_progress", [])},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_rec_1", "output_index": 0,
         "delta": args},
        {"type": "response.function_call_arguments.done", "item_id": "fc_rec_1", "output_index": 0,
         "arguments": args},
        {"type": "response.output_item.done", "output_index": 0, "item": final_item},
        {"type": "response.completed", "response": openai_response(body, "completed", [final_item])},
    ]
    return [_sse(e["type"], {**e, "sequence_number": n}) for n, e in enumerate(events)]


def responses_events(body: dict[str, Any]) -> list[bytes]:
    """The Responses SSE sequence for one assistant text message."""
    item_id = "msg_rec_1"
    item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    final_item = {**item, "status": "completed", "content": [{**part, "text": ANSWER}]}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": openai_response(body, "in_progress", [])},
        {"type": "response.in_progress", "response": openai_response(body, "in_progress", [])},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", "item_id": item_id, "output_index": 0, "content_index": 0,
         "part": part},
        *[{"type": "response.output_text.delta", "item_id": item_id, "output_index": 0, "content_index": 0,
           "delta": ANSWER[i:i + 8], "logprobs": []} for i in range(0, len(ANSWER), 8)],
        {"type": "response.output_text.done", "item_id": item_id, "output_index": 0, "content_index": 0,
         "text": ANSWER, "logprobs": []},
        {"type": "response.content_part.done", "item_id": item_id, "output_index": 0, "content_index": 0,
         "part": {**part, "text": ANSWER}},
        {"type": "response.output_item.done", "output_index": 0, "item": final_item},
        {"type": "response.completed", "response": openai_response(body, "completed", [final_item])},
    ]
    return [_sse(e["type"], {**e, "sequence_number": n}) for n, e in enumerate(events)]


def make_app(recorder: Recorder, tool_turn: bool = False) -> web.Application:
    """The recording app: known agent endpoints answered plausibly, anything else ``200 {}``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await recorder.record(request)
        path = request.path.rstrip("/")
        data = body if isinstance(body, dict) else {}
        if request.method == "POST" and path.endswith("/messages/count_tokens"):
            return web.json_response({"input_tokens": 100})
        if request.method == "POST" and path.endswith("/messages"):
            message = anthropic_message(data, tool_turn)
            if data.get("stream"):
                return await _send_sse(request, anthropic_events(message))
            return web.json_response(message)
        if request.method == "POST" and path.endswith("/responses"):
            if data.get("stream"):
                if tool_turn and responses_wants_tool(data):
                    return await _send_sse(request, responses_tool_events(data))
                return await _send_sse(request, responses_events(data))
            item = {"id": "msg_rec_1", "type": "message", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]}
            return web.json_response(openai_response(data, "completed", [item]))
        if path.endswith("/models"):
            return web.json_response({"object": "list", "data": [], "models": []})
        return web.json_response({})

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def refuse_proxy(recorder: Recorder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Log the target of a proxied request (CONNECT host:port or absolute URL) and refuse it."""
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        recorder.write({"blocked": line.decode("latin-1").strip()})
        writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int, log: Path, proxy_port: int | None, tool_turn: bool = False) -> None:
    """Run until cancelled."""
    recorder = Recorder(log)
    runner = web.AppRunner(make_app(recorder, tool_turn), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    if proxy_port:
        await asyncio.start_server(lambda r, w: refuse_proxy(recorder, r, w), "127.0.0.1", proxy_port)
    print(f"recording on http://127.0.0.1:{port} -> {log}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--proxy-port", type=int, default=None)
    parser.add_argument("--tool-turn", action="store_true", help="answer the first main turn with a tool call")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.log, args.proxy_port, args.tool_turn))


if __name__ == "__main__":
    main()
