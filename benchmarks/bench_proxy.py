"""Throughput and added latency of the whole gateway against a bare pass-through, in one run.

Method (as in ../shared/BENCHMARKS.md): a minimal aiohttp mock upstream (non-streaming chat answer,
~300 bytes, no delay) and the proxy under test share CPU 0; wrk (-t2 -c32) runs on CPU 1 with a Lua
script that POSTs a small chat request. Compared in the same run:

- direct: wrk -> mock upstream
- bare: a naive aiohttp + uvloop pass-through (read bytes, POST upstream on a pooled session, return)
- gateway: ``gateway serve`` with a policy that turns on auth, input checks, rate limits, cache
  (disabled per request by a no-store header so every request reaches the upstream), budgets, metrics.

Usage: ``python benchmarks/bench_proxy.py [--duration 10] [--connections 32]``. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent

MOCK = """
import sys, orjson, uvloop
from aiohttp import web
BODY = orjson.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
  "finish_reason": "stop"}], "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}})
async def h(request):
    await request.read()
    return web.Response(body=BODY, content_type="application/json")
app = web.Application(); app.router.add_post("/v1/chat/completions", h)
uvloop.install(); web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

BARE = """
import sys, aiohttp, uvloop
from aiohttp import web
UP = sys.argv[2]
async def start(app):
    app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
async def h(request):
    body = await request.read()
    async with request.app["s"].post(UP, data=body, headers={"content-type": "application/json"}) as r:
        return web.Response(body=await r.read(), status=r.status, content_type="application/json")
app = web.Application(); app.on_startup.append(start); app.router.add_post("/v1/chat/completions", h)
uvloop.install(); web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

POLICY = """
version: 1
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{up}/v1", api_key: sk-up}}
models:
  m:
    context_window: 8000
    price: {{input: 0.15, output: 0.6}}
    deployments: [{{provider: up, model: m}}]
cache: {{enabled: true, ttl_s: 60}}
logging: {{access_log: "off"}}
tenants:
  bench:
    api_keys: [sk-bench]
    models: [m]
    rate_limit: {{rpm: 100000000, tpm: 100000000000, concurrency: 100000}}
    budget: {{usd: 1000000000, period: total}}
"""

WRK_LUA = """
wrk.method = "POST"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"Say hello"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.headers["Cache-Control"] = "no-store, no-cache"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], cpu: str = "0") -> subprocess.Popen:
    prefix = ["taskset", "-c", cpu] if shutil.which("taskset") else []
    return subprocess.Popen(prefix + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_wrk(url: str, duration: int, connections: int, lua: Path) -> dict[str, float]:
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", str(lua), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "non2xx": float(errors.group(1)) if errors else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found (apt-get install wrk)")
        return 1
    tmp = Path(tempfile.mkdtemp())
    lua = tmp / "post.lua"
    lua.write_text(WRK_LUA)
    up, bare, gw = free_port(), free_port(), free_port()
    (tmp / "policy.yaml").write_text(textwrap.dedent(POLICY.format(up=up)))
    procs = [spawn([sys.executable, "-c", MOCK, str(up)])]
    wait_port(up)
    procs.append(spawn([sys.executable, "-c", BARE, str(bare), f"http://127.0.0.1:{up}/v1/chat/completions"]))
    procs.append(spawn([sys.executable, "-m", "gateway", "serve", "--policy", str(tmp / "policy.yaml"),
                        "--port", str(gw), "--quiet"]))
    try:
        wait_port(bare)
        wait_port(gw)
        check = httpx.post(f"http://127.0.0.1:{gw}/v1/chat/completions", headers={"Authorization": "Bearer sk-bench"},
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        check.raise_for_status()
        rows = []
        for name, port, proc in (("direct", up, procs[0]), ("bare aiohttp pass-through", bare, procs[1]),
                                 ("gateway, full policy", gw, procs[2])):
            r = run_wrk(f"http://127.0.0.1:{port}/v1/chat/completions", args.duration, args.connections, lua)
            rows.append((name, r, rss_mib(proc.pid)))
        print(f"{'what sits between wrk and the mock':<30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'non-2xx':>8} {'RSS MiB':>8}")
        for name, r, rss in rows:
            print(f"{name:<30} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['non2xx']:>8.0f} {rss:>8.1f}")
        print(f"gateway / bare throughput: {rows[2][1]['rps'] / rows[1][1]['rps']:.2f}x "
              f"(cpu count {os.cpu_count()}, duration {args.duration}s, {args.connections} connections)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
