"""The HTTP path's own costs, measured alone: which aiohttp server layer, which upstream-call timing.

1. server: CPU per request of a tiny answer served by ``web.Application`` (router, the handler the
   gateway uses) against aiohttp's low-level ``web.Server`` (no application, no router), under wrk.
2. client: CPU per upstream POST (pooled session, 32 concurrent callers) with the gateway's per-call
   timing (``timed_post``: one ``asyncio.timeout`` moved by a ``PoolTimer``) told by aiohttp's tracing
   signals (``tracing``, before) or by the provider's connector (``connector``, now), against a
   session without either and a plain ``asyncio.timeout`` per call (``bare``).

Alternating rounds, CPU time of the process under test only. Usage:
``python benchmarks/bench_http_path.py [--rounds 3] [--duration 4] [--calls 20000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
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
port = int(sys.argv[1])
if sys.argv[2] == "app":
    app = web.Application(); app.router.add_post("/v1/chat/completions", h)
    uvloop.install(); web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
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
    out: dict[str, list[float]] = {"app": [], "server": []}
    for _ in range(rounds):
        for kind in out:
            port = free_port()
            proc = spawn([sys.executable, "-c", SERVER.format(body=CHAT_ANSWER), str(port), kind])
            try:
                wait_port(port)
                before = cpu_s(proc.pid)
                r = run_wrk(f"http://127.0.0.1:{port}/v1/chat/completions", duration, 32, lua)
                out[kind].append((cpu_s(proc.pid) - before) / (r["rps"] * duration) * 1e6)
            finally:
                stop_all([proc])
    return out


async def _client(kind: str, url: str, calls: int) -> float:
    import aiohttp

    from gateway.providers.openai import timed_post
    from gateway.providers.pool import PoolTimer, TimedConnector, pool_trace

    traced = kind != "bare"
    connector = TimedConnector(limit=64) if kind == "connector" else aiohttp.TCPConnector(limit=64)
    session = aiohttp.ClientSession(connector=connector, trace_configs=[pool_trace()] if kind == "tracing" else None)
    headers = {"content-type": "application/json"}
    data = b'{"model":"m","messages":[{"role":"user","content":"Say hello"}]}'
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if traced:
                resp = await timed_post(session, "up", url, data, headers, 30.0, 60.0, PoolTimer(10.0, 5.0, 30.0))
            else:
                async with asyncio.timeout(30.0):
                    resp = await session.post(url, data=data, headers=headers)
            await resp.read()
            resp.release()

    await asyncio.gather(*(worker() for _ in range(32)))  # warm the pool
    left = calls
    t0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(32)))
    spent = time.process_time() - t0
    await session.close()
    return spent / calls * 1e6


def bench_client(rounds: int, calls: int) -> dict[str, list[float]]:
    port = free_port()
    server = spawn([sys.executable, "-c", SERVER.format(body=CHAT_ANSWER), str(port), "server"], cpu="1")
    out: dict[str, list[float]] = {"tracing": [], "connector": [], "bare": []}
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
    args = ap.parse_args()
    for title, figures in (("server: CPU us per request", bench_server(args.rounds, args.duration)),
                           ("client: CPU us per upstream call", bench_client(args.rounds, args.calls))):
        print(title)
        for kind, values in figures.items():
            cells = " ".join(f"{v:7.1f}" for v in values)
            print(f"  {kind:<14} {cells}   best {min(values):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
