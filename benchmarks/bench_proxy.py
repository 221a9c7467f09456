"""Throughput and added latency of the whole gateway against a bare pass-through, in one run.

Method (as in benchmarks/REFERENCE.md): a minimal aiohttp mock upstream (non-streaming chat answer,
~300 bytes, no delay) and the proxy under test share CPU 0; wrk (-t2 -c32) runs on CPU 1 with a Lua
script that POSTs a small chat request. Compared in the same run:

- direct: wrk -> mock upstream
- bare: a naive aiohttp + uvloop pass-through (read bytes, POST upstream on a pooled session, return)
- gateway: ``gateway serve`` with a policy that turns on auth, input checks, rate limits, cache
  (disabled per request by a no-store header so every request reaches the upstream), budgets, metrics.

CPU per request is each proxy process's user+system time over the run divided by the requests wrk
completed (the issue's target: the gateway's at most 2x the bare pass-through's).

Usage: ``python benchmarks/bench_proxy.py [--duration 10] [--connections 32] [--redis]``. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    WRK_COLUMNS,
    cpu_s,
    free_port,
    missing_tool,
    post_lua,
    rss_mib,
    run_wrk,
    spawn,
    spawn_gateway,
    spawn_mock,
    start_redis,
    stop_all,
    wait_port,
    wrk_cells,
)

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

BODY = '{"model":"m","messages":[{"role":"user","content":"Say hello"}]}'
HEADERS = {"Authorization": "Bearer sk-bench", "Cache-Control": "no-store, no-cache"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--redis", action="store_true", help="also run the gateway with its state in a local Redis")
    args = ap.parse_args()
    if missing_tool("wrk"):
        print("wrk not found (apt-get install wrk)")
        return 1
    tmp = Path(tempfile.mkdtemp())
    lua = tmp / "post.lua"
    lua.write_text(post_lua(BODY, HEADERS))
    up, bare, gw = free_port(), free_port(), free_port()
    (tmp / "policy.yaml").write_text(textwrap.dedent(POLICY.format(up=up)))
    procs = [spawn_mock(up)]
    wait_port(up)
    procs.append(spawn([sys.executable, "-c", BARE, str(bare), f"http://127.0.0.1:{up}/v1/chat/completions"]))
    procs.append(spawn_gateway(tmp / "policy.yaml", gw))
    targets = [("direct", up, procs[0]), ("bare aiohttp pass-through", bare, procs[1]),
               ("gateway, full policy", gw, procs[2])]
    if args.redis:
        rport, gw_redis = free_port(), free_port()
        procs.append(start_redis(rport, tmp))
        wait_port(rport)
        state = f'state: {{backend: redis, redis_url: "redis://127.0.0.1:{rport}/0", timeout_ms: 1000}}\n'
        (tmp / "policy-redis.yaml").write_text(state + textwrap.dedent(POLICY.format(up=up)))
        procs.append(spawn_gateway(tmp / "policy-redis.yaml", gw_redis))
        targets.append(("gateway, full policy, Redis", gw_redis, procs[-1]))
    try:
        wait_port(bare)
        for _, port, _ in targets[2:]:
            wait_port(port)
        check = httpx.post(f"http://127.0.0.1:{gw}/v1/chat/completions", headers={"Authorization": "Bearer sk-bench"},
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        check.raise_for_status()
        rows = []
        for name, port, proc in targets:
            before = cpu_s(proc.pid)
            r = run_wrk(f"http://127.0.0.1:{port}/v1/chat/completions", args.duration, args.connections, lua)
            r["cpu_us"] = (cpu_s(proc.pid) - before) / max(1.0, r["rps"] * args.duration) * 1e6  # NaN: unreadable
            rows.append((name, r, rss_mib(proc.pid)))
        print(f"{'what sits between wrk and the mock':<30} {WRK_COLUMNS} {'CPU us/req':>10} {'RSS MiB':>8}")
        for name, r, rss in rows:
            print(f"{name:<30} {wrk_cells(r)} {r['cpu_us']:>10.0f} {rss:>8.1f}")
        bare_r, gw_r = rows[1][1], rows[2][1]
        print(f"gateway / bare throughput: {gw_r['rps'] / max(bare_r['rps'], 1e-9):.2f}x, CPU per request: "
              f"{gw_r['cpu_us'] / max(bare_r['cpu_us'], 1e-9):.2f}x "
              f"(cpu count {os.cpu_count()}, duration {args.duration}s, {args.connections} connections)")
    finally:
        stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
