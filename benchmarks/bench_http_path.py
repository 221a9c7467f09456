"""The HTTP path's own costs, measured alone: which aiohttp server layer, which upstream-call timing.

1. server: CPU per request of a tiny answer served by ``web.Application`` with a ``web.Response``
   (``app``), by aiohttp's low-level ``web.Server`` (``server``: no application, no router), by the
   application with the gateway's ``WholeAnswer`` (``whole``: what the gateway answers with now), and by
   aiohttp's C request parser under a plain ``asyncio.Protocol`` writing the answer itself
   (``protocol``: the floor of any server built on aiohttp's parser), under wrk.
2. client: CPU per upstream POST (32 concurrent callers): a pooled session's ``post`` under a plain
   ``asyncio.timeout`` (``bare``, the floor of ``session.post``), and a whole call through the OpenAI
   provider (``OpenAIProvider.send``: the pool timer, headers, the answer read) over ``session.post``
   (``provider-session``, before) or over ``gateway.providers.exchange`` (``provider-exchange``, now).
   (The tracing-signal and connector-hook timers measured in an earlier pass are in the README.)

Alternating rounds, CPU time of the process under test only. Usage:
``python benchmarks/bench_http_path.py [--rounds 3] [--duration 4] [--calls 20000] [--server | --client]``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import CHAT_ANSWER, cpu_s, free_port, post_lua, run_wrk, spawn, stop_all, wait_port  # noqa: E402

SERVER = """
import sys, uvloop, asyncio
from aiohttp import web
BODY = {body!r}
async def h(request):
    await request.read()
    return web.Response(body=BODY, content_type="application/json", headers={{"x-request-id": "r"}})
async def whole(request):
    from gateway.http.answer import WholeAnswer
    await request.read()
    return WholeAnswer(200, BODY, {{"x-request-id": "r"}}, "application/json")
port = int(sys.argv[1])
if sys.argv[2] in ("app", "whole"):
    app = web.Application(); app.router.add_post("/v1/chat/completions", h if sys.argv[2] == "app" else whole)
    uvloop.install(); web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
elif sys.argv[2] == "protocol":  # aiohttp's C request parser under a plain asyncio.Protocol: the floor
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.http_parser import HttpRequestParser
    from gateway.http.answer import http_date
    class Conn(BaseProtocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.parser = HttpRequestParser(self, self._loop, 2**16, max_line_size=8190, max_field_size=8190)
        def data_received(self, data):
            for message, payload in self.parser.feed_data(data)[0]:
                self._loop.create_task(self.answer(payload))
        async def answer(self, payload):
            await payload.read()
            head = (f"HTTP/1.1 200 OK\\r\\nx-request-id: r\\r\\nContent-Type: application/json\\r\\n"
                    f"Content-Length: {{len(BODY)}}\\r\\nDate: {{http_date()}}\\r\\nServer: bench\\r\\n\\r\\n")
            self.transport.write(head.encode() + BODY)
    async def main():
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: Conn(loop), "127.0.0.1", port, backlog=2048)
        await asyncio.Event().wait()
    uvloop.install(); asyncio.run(main())
else:
    async def main():
        server = web.Server(h, access_log=None)
        loop = asyncio.get_running_loop()
        await loop.create_server(server, "127.0.0.1", port, backlog=2048)
        await asyncio.Event().wait()
    uvloop.install(); asyncio.run(main())
"""


def bench_server(rounds: int, duration: int) -> dict[str, list[float]]:
    tmp = Path(tempfile.mkdtemp())
    lua = tmp / "post.lua"
    lua.write_text(post_lua('{"model":"m","messages":[{"role":"user","content":"Say hello"}]}', {}))
    out: dict[str, list[float]] = {"app": [], "server": [], "whole": [], "protocol": []}
    root = str(Path(__file__).resolve().parent.parent)
    for _ in range(rounds):
        for kind in out:
            port = free_port()
            code = f"import sys; sys.path.insert(0, {root!r})\n" + SERVER.format(body=CHAT_ANSWER)
            proc = spawn([sys.executable, "-c", code, str(port), kind])
            try:
                wait_port(port)
                before = cpu_s(proc.pid)
                r = run_wrk(f"http://127.0.0.1:{port}/v1/chat/completions", duration, 32, lua)
                out[kind].append((cpu_s(proc.pid) - before) / (r["rps"] * duration) * 1e6)
            finally:
                stop_all([proc])
    return out


async def _per_call(call: Callable[[], Awaitable[None]], calls: int) -> float:
    """CPU microseconds per ``call`` made by 32 concurrent callers, after a warm-up round as long."""
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    await asyncio.gather(*(worker() for _ in range(32)))
    left = calls
    t0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(32)))
    return (time.process_time() - t0) / calls * 1e6


async def _provider(kind: str, url: str, calls: int) -> float:
    from gateway.policy.model import ProviderSpec
    from gateway.providers import openai
    from gateway.providers.base import UpstreamRequest

    openai.LEAN = kind == "provider-exchange"  # the module's switch between the two POSTs
    provider = openai.OpenAIProvider(ProviderSpec(name="up", type="openai", base_url=url.rsplit("/chat", 1)[0],
                                                  api_key="sk-up", max_connections=64))
    body = {"model": "m", "messages": [{"role": "user", "content": "Say hello"}]}
    raw = b'{"model":"m","messages":[{"role":"user","content":"Say hello"}]}'

    async def call() -> None:
        answer = await provider.send(UpstreamRequest("chat", body, False, "r", raw=raw))
        assert answer.status == 200 and answer.body

    try:
        return await _per_call(call, calls)
    finally:
        await provider.close()


async def _client(kind: str, url: str, calls: int) -> float:
    import aiohttp

    if kind.startswith("provider-"):
        return await _provider(kind, url, calls)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    headers = {"content-type": "application/json"}
    data = b'{"model":"m","messages":[{"role":"user","content":"Say hello"}]}'

    async def call() -> None:
        async with asyncio.timeout(30.0):
            resp = await session.post(url, data=data, headers=headers)
        await resp.read()
        resp.release()

    try:
        return await _per_call(call, calls)
    finally:
        await session.close()


def bench_client(rounds: int, calls: int) -> dict[str, list[float]]:
    port = free_port()
    server = spawn([sys.executable, "-c", SERVER.format(body=CHAT_ANSWER), str(port), "server"], cpu="1")
    out: dict[str, list[float]] = {"bare": [], "provider-session": [], "provider-exchange": []}
    try:
        wait_port(port)
        for _ in range(rounds):
            for kind in out:
                root = str(Path(__file__).resolve().parent.parent)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                code = (f"import asyncio, sys, uvloop; sys.path.insert(0, {root!r}); "
                        "from benchmarks.bench_http_path import _client; uvloop.install(); "
                        f"print(asyncio.run(_client({kind!r}, {url!r}, {calls})))")
                res = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True,
                                     text=True, check=True)
                out[kind].append(float(res.stdout.strip().splitlines()[-1]))
    finally:
        stop_all([server])
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--client", action="store_true", help="only the client figures")
    ap.add_argument("--server", action="store_true", help="only the server figures")
    args = ap.parse_args()
    parts = [] if args.client else [("server: CPU us per request", bench_server(args.rounds, args.duration))]
    if not args.server:
        parts.append(("client: CPU us per upstream call", bench_client(args.rounds, args.calls)))
    for title, figures in parts:
        print(title)
        for kind, values in figures.items():
            cells = " ".join(f"{v:7.1f}" for v in values)
            print(f"  {kind:<18} {cells}   best {min(values):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
