"""Cache HIT latency and throughput, in-process store and Redis, against a MISS for scale, in one run.

Method (as ``bench_proxy.py`` and benchmarks/REFERENCE.md): a minimal aiohttp mock upstream and the
gateway under test share CPU 0; Redis (a private ``redis-server`` on a free port, no persistence)
runs there too. For each backend the cache is warmed with one request, then:

- latency: sequential requests on one keep-alive connection (no load): p50/p99 of a HIT, whole and
  streamed, and of a MISS (``Cache-Control: no-cache, no-store``, so every request reaches the mock);
- throughput: ``wrk -t2 -c32`` on CPU 1 POSTing the same request (all HITs) and the MISS variant.

Usage: ``python benchmarks/bench_cache.py [--duration 10] [--connections 32] [--requests 2000]``.
Needs ``wrk`` and ``redis-server``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    free_port,
    missing_tool,
    post_lua,
    run_wrk,
    running_gateway,
    spawn_mock,
    start_redis,
    stop_all,
    wait_port,
)

POLICY = """
version: 1
state: {{{state}}}
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{up}/v1", api_key: sk-up}}
models:
  m:
    context_window: 8000
    price: {{input: 0.15, output: 0.6}}
    deployments: [{{provider: up, model: m}}]
cache: {{enabled: true, ttl_s: 3600}}
logging: {{access_log: "off"}}
tenants:
  bench:
    api_keys: [sk-bench]
    models: [m]
"""

BODY = '{"model":"m","temperature":0,"messages":[{"role":"user","content":"Say hello"}]}'  # temperature 0: cacheable
AUTH = {"Authorization": "Bearer sk-bench"}
NO_CACHE = {"Cache-Control": "no-cache, no-store"}


def latency_ms(url: str, n: int, headers: dict[str, str], stream: bool = False) -> tuple[float, float, str]:
    """p50, p99 (ms) of ``n`` sequential requests, and the last ``x-cache`` seen."""
    body = BODY[:-1] + ',"stream":true}' if stream else BODY
    hdrs = {**AUTH, "Content-Type": "application/json", **headers}
    times: list[float] = []
    status = ""
    with httpx.Client(timeout=10.0) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            r = client.post(url, content=body, headers=hdrs)
            r.read()
            times.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            status = r.headers.get("x-cache", "")
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1], status


def bench_backend(name: str, state: str, up: int, tmp: Path, args: argparse.Namespace) -> list[tuple]:
    policy = tmp / f"{name}.yaml"
    policy.write_text(textwrap.dedent(POLICY.format(state=state, up=up)))
    rows = []
    with running_gateway(policy) as port:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        latency_ms(url, 1, {})  # warm the entry
        for label, headers, stream in (("HIT", {}, False), ("HIT stream", {}, True), ("MISS", NO_CACHE, False)):
            p50, p99, seen = latency_ms(url, args.requests, headers, stream)
            assert seen == label.split()[0] or label == "MISS", f"expected {label}, got {seen}"
            rows.append((name, label, "latency", p50, p99, None))
        for label, headers in (("HIT", AUTH), ("MISS", {**AUTH, **NO_CACHE})):
            lua = tmp / f"{name}-{label}.lua"
            lua.write_text(post_lua(BODY, headers))
            r = run_wrk(url, args.duration, args.connections, lua)
            rows.append((name, label, f"wrk -c{args.connections}", r["p50"], r["p99"], r["rps"]))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    if tool := missing_tool("wrk", "redis-server"):
        print(f"{tool} not found (apt-get install {tool})")
        return 1
    tmp = Path(tempfile.mkdtemp())
    up, redis_port = free_port(), free_port()
    procs = [spawn_mock(up), start_redis(redis_port, tmp)]
    try:
        wait_port(up)
        wait_port(redis_port)
        rows = bench_backend("in-process", "backend: memory", up, tmp, args)
        rows += bench_backend("redis", f"backend: redis, redis_url: 'redis://127.0.0.1:{redis_port}/0'", up, tmp,
                              args)
        print(f"{'backend':<11} {'request':<11} {'method':<9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
        for name, label, method, p50, p99, rps in rows:
            print(f"{name:<11} {label:<11} {method:<9} {p50:>8.2f} {p99:>8.2f} "
                  f"{'' if rps is None else f'{rps:.0f}':>9}")
        print(f"(sequential latency over {args.requests} requests; wrk {args.duration}s on CPU 1, "
              "gateway + mock + redis on CPU 0)")
    finally:
        stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
