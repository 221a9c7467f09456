"""A minimal OpenAI-style upstream for the benchmarks: ``python -m benchmarks.runner.mock_upstream PORT``.

Any POST gets the same ~300-byte chat completion, no delay (``/v1/messages`` and ``/v1/responses``: the
same answer in those APIs' shapes). A request with ``"stream": true`` gets an
SSE answer instead: a first chunk at once, then 20 text chunks, a usage chunk and ``[DONE]``. A streamed
request whose body holds the string ``"hold"`` gets its first chunk and then nothing until the client
leaves or ``--hold-s`` passes (the idle-streams scenarios). With ``--reuse-port`` several mock processes
share the port (SO_REUSEPORT), so more streams are held than one process's open-file limit allows.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
import uvloop
from aiohttp import web

CHAT_ANSWER = orjson.dumps({
    "id": "x", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
})


TEXT = "Hello! How can I help you today?"
ANSWERS = {  # by the request path's last segment: each API's own answer shape (LiteLLM calls them natively)
    "messages": orjson.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "text", "text": TEXT}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 9}}),
    "responses": orjson.dumps({
        "id": "resp_1", "object": "response", "created_at": 0, "status": "completed", "model": "m",
        "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": TEXT, "annotations": []}]}],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None,
        "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
        "usage": {"input_tokens": 9, "output_tokens": 9, "total_tokens": 18,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}}),
}


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    payload = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


FIRST = _chunk({"role": "assistant", "content": "Hello"})
REST = b"".join([*(_chunk({"content": f" w{i}"}) for i in range(20)), _chunk({}, "stop"),
                 b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                           "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 21,
                                                                    "total_tokens": 30}}) + b"\n\n",
                 b"data: [DONE]\n\n"])


def is_stream(body: bytes) -> bool:
    return b'"stream":true' in body or b'"stream": true' in body


def make_app(hold_s: float) -> web.Application:
    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not is_stream(body):
            answer = ANSWERS.get(request.path.rsplit("/", 1)[-1], CHAT_ANSWER)
            return web.Response(body=answer, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(FIRST)
        if b'"hold"' in body:  # the server cancels this handler when the client leaves (no polling per stream)
            await asyncio.sleep(hold_s)
        await resp.write(REST)
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_route("POST", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--hold-s", type=float, default=60.0)
    parser.add_argument("--reuse-port", action="store_true", help="share the port with other mock processes")
    args = parser.parse_args()
    uvloop.install()
    web.run_app(make_app(args.hold_s), host="127.0.0.1", port=args.port, access_log=None, print=None,
                backlog=4096, reuse_port=args.reuse_port or None, handler_cancellation=True)


if __name__ == "__main__":
    main()
