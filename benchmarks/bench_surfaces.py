"""What the Anthropic Messages and OpenAI Responses surfaces add per request over plain chat.

In process (always): microseconds per request for the work each surface does around the pipeline,
which runs on chat either way:

* whole answers: parse the request, translate it to chat (``inbound``), render the chat answer in the
  surface's format and serialize it. Chat itself only parses the request (its answer is forwarded).
* streams: frame a streamed chat answer (120 text chunks and a usage chunk, or a tool call in 40
  argument chunks) as SSE. Chat wraps each payload in ``data: ...``; the surfaces parse each chunk
  and emit their own events.

for a small request and a real agent request (Claude Code's first request for Messages, Codex's for
Responses); the chat baseline carries the same request in chat form and the same answer.

With ``--e2e``: requests per second through a local gateway (subprocess) and a minimal mock upstream,
per surface, from ``--connections`` concurrent aiohttp clients for ``--duration`` seconds each.

Usage: ``python benchmarks/bench_surfaces.py [--seconds 0.5] [--e2e --duration 4 --connections 16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import free_port, running_gateway, spawn_mock, stop_all, wait_port  # noqa: E402
from gateway.surfaces.anthropic_request import messages_to_chat  # noqa: E402
from gateway.surfaces.anthropic_response import chat_to_message  # noqa: E402
from gateway.surfaces.anthropic_stream import MessagesStream  # noqa: E402
from gateway.surfaces.base import data_frame  # noqa: E402
from gateway.surfaces.responses_request import responses_to_chat  # noqa: E402
from gateway.surfaces.responses_response import chat_to_response  # noqa: E402
from gateway.surfaces.responses_stream import ResponsesStream  # noqa: E402

AGENTS = ROOT / "tests" / "fixtures" / "agents"
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}}
SMALL = {
    "chat": {"model": "m", "max_tokens": 256, "messages": [{"role": "user", "content": "Hello there, how are you?"}]},
    "messages": {"model": "m", "max_tokens": 256, "messages": [{"role": "user", "content": "Hello there, how are you?"}]},
    "responses": {"model": "m", "max_output_tokens": 256, "input": "Hello there, how are you?"},
}


def agent_bodies() -> dict[str, dict]:
    """Real agent requests, non-streamed: Claude Code's for Messages, Codex's for Responses."""
    claude = orjson.loads((AGENTS / "claude_code_messages.json").read_bytes())["body"]
    codex = orjson.loads((AGENTS / "codex_responses_gpt-5.5.json").read_bytes())["body"]
    return {"messages": {**claude, "stream": False}, "responses": {**codex, "stream": False}}


def as_chat(surface: str, body: dict) -> dict:
    """The same request in chat form: what a chat client would have sent (the baseline)."""
    return (messages_to_chat if surface == "messages" else responses_to_chat)(body)[0]


def chunk(delta: dict, finish: str | None = None) -> bytes:
    return orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def text_stream() -> list[bytes]:
    usage = orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
                          "usage": {"prompt_tokens": 9, "completion_tokens": 120, "total_tokens": 129}})
    return [chunk({"role": "assistant", "content": ""}), *(chunk({"content": f" word{i}"}) for i in range(120)),
            chunk({}, "stop"), usage]


def tool_stream() -> list[bytes]:
    start = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                             "function": {"name": "exec_command", "arguments": ""}}]}
    parts = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"cmd":"ls' if i == 0 else "x"}}]})
             for i in range(40)]
    end = chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"}'}}]})
    return [chunk({"role": "assistant", "content": None}), chunk(start), *parts, end, chunk({}, "tool_calls")]


def whole(surface: str, raw: bytes, answer: bytes) -> Callable[[], object]:
    """One whole request's surface work: parse, translate, render, serialize."""
    if surface == "chat":
        return lambda: orjson.loads(raw)
    if surface == "messages":
        def messages() -> bytes:
            body = orjson.loads(raw)
            messages_to_chat(body)
            return orjson.dumps(chat_to_message(orjson.loads(answer), body["model"], message_id="msg_1"))
        return messages

    def responses() -> bytes:
        body = orjson.loads(raw)
        responses_to_chat(body)
        return orjson.dumps(chat_to_response(orjson.loads(answer), response_id="resp_1", request=body,
                                             created_at=0, completed_at=0))
    return responses


def streamed(surface: str, request: dict, payloads: list[bytes]) -> Callable[[], object]:
    """One streamed answer's framing, as ``Framing.frame`` + ``end`` do it for each surface."""
    if surface == "chat":
        return lambda: [data_frame(p) for p in payloads]
    if surface == "messages":
        def messages() -> list[bytes]:
            stream = MessagesStream("m", "msg_1", 9)
            out = [b"".join(stream.feed(orjson.loads(p))) for p in payloads]
            return [*out, b"".join(stream.close())]
        return messages

    def responses() -> list[bytes]:
        stream = ResponsesStream("resp_1", request, 0)
        out = [b"".join(stream.feed(orjson.loads(p))) for p in payloads]
        return [*out, b"".join(stream.close())]
    return responses


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(5):
            fn()
        n += 5
    return elapsed / n * 1e6


def in_process(seconds: float) -> None:
    """Each surface against chat carrying the same request (its translation) and the same answer."""
    answer = orjson.dumps(ANSWER)
    print(f"{'case':<30} {'surface':<10} {'chat us':>9} {'surface us':>11} {'added us':>9}")
    for label, bodies in (("whole answer, small request", SMALL), ("whole answer, agent request", agent_bodies())):
        for surface in ("messages", "responses"):
            body = bodies[surface]
            chat = per_call_us(whole("chat", orjson.dumps(as_chat(surface, body)), answer), seconds)
            own = per_call_us(whole(surface, orjson.dumps(body), answer), seconds)
            print(f"{label:<30} {surface:<10} {chat:>9.1f} {own:>11.1f} {own - chat:>+9.1f}")
    for label, payloads in (("stream, 120 text chunks", text_stream()), ("stream, tool call", tool_stream())):
        chat = per_call_us(streamed("chat", SMALL["chat"], payloads), seconds)
        for surface in ("messages", "responses"):
            own = per_call_us(streamed(surface, SMALL[surface], payloads), seconds)
            print(f"{label:<30} {surface:<10} {chat:>9.1f} {own:>11.1f} {own - chat:>+9.1f}")


E2E_POLICY = """\
version: 1
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", api_key: sk-up}}
models:
  m: {{deployments: [{{provider: up, model: m}}]}}
cache: {{enabled: false}}
tenants:
  bench: {{api_keys: [sk-bench], models: "*"}}
"""
PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}


async def load(url: str, body: dict, duration: float, connections: int) -> tuple[float, float, int]:
    """(req/s, p50 ms, errors) of ``connections`` clients POSTing ``body`` back to back for ``duration`` s."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"authorization": "Bearer sk-bench", "anthropic-version": "2023-06-01"}
    raw = orjson.dumps({**body, "store": False} if "input" in body else body)

    async def client(session: aiohttp.ClientSession, until: float) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            start = time.perf_counter()
            async with session.post(url, data=raw, headers={**headers, "content-type": "application/json"}) as r:
                await r.read()
                errors += r.status != 200
            latencies.append(time.perf_counter() - start)

    async with aiohttp.ClientSession() as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(session, began + duration) for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return len(latencies) / elapsed, latencies[len(latencies) // 2] * 1000, errors


def end_to_end(duration: float, connections: int) -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    mock_port = free_port()
    mock = spawn_mock(mock_port)
    try:
        wait_port(mock_port)
        with tempfile.TemporaryDirectory() as folder:
            policy = Path(folder) / "policy.yaml"
            policy.write_text(E2E_POLICY.format(port=mock_port))
            with running_gateway(policy) as port:
                print(f"\n{'surface':<10} {'req/s':>9} {'p50 ms':>8} {'errors':>7}   "
                      f"({connections} connections, {duration:g} s each, small request)")
                for surface, path in PATHS.items():
                    rps, p50, errors = asyncio.run(load(f"http://127.0.0.1:{port}{path}", SMALL[surface],
                                                        duration, connections))
                    print(f"{surface:<10} {rps:>9.0f} {p50:>8.2f} {errors:>7}")
    finally:
        stop_all([mock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per in-process measurement")
    parser.add_argument("--e2e", action="store_true", help="also measure req/s through a local gateway")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per surface with --e2e")
    parser.add_argument("--connections", type=int, default=16, help="concurrent clients with --e2e")
    args = parser.parse_args()
    in_process(args.seconds)
    if args.e2e:
        end_to_end(args.duration, args.connections)


if __name__ == "__main__":
    main()
