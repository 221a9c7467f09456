"""What a cost budget costs: the ledger's reserve+settle, and the gateway with and without a budget.

1. Ledger: sequential reserve+settle pairs (the two round trips a budgeted request pays) on the
   in-process backend and on a private ``redis-server`` (loopback), in pairs/s and microseconds.
2. Gateway (method as ``bench_proxy.py`` / benchmarks/REFERENCE.md: mock upstream, gateway and
   Redis on CPU 0, ``wrk -t2 -c32`` on CPU 1): the same non-stream request from a tenant without a
   budget and from one with a budget, per backend, in the same run.

Usage: ``python benchmarks/bench_budget.py [--duration 10] [--connections 32] [--pairs 5000]``.
Needs ``wrk`` and ``redis-server``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    WRK_COLUMNS,
    free_port,
    missing_tool,
    post_lua,
    run_wrk,
    running_gateway,
    spawn_mock,
    start_redis,
    stop_all,
    wait_port,
    wrk_cells,
)
from gateway.budget.ledger import Charge, Ledger, ScopeArgs  # noqa: E402
from gateway.state import MemoryBackend, RedisBackend  # noqa: E402

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
logging: {{access_log: "off"}}
tenants:
  free:
    api_keys: [sk-free]
    models: [m]
  budgeted:
    api_keys: [sk-budgeted]
    models: [m]
    budget: {{usd: 1000000, period: monthly, soft: 0.8, on_soft: warn}}
"""

BODY = '{"model":"m","messages":[{"role":"user","content":"Say hello"}],"max_tokens":64}'


async def ledger_pairs(ledger: Ledger, pairs: int) -> float:
    """Reserve+settle pairs per second, sequential (latency-bound, as one request sees it)."""
    scope = ScopeArgs("gw:{bench}:bud:t:m2026-01", 10**20, None, True, False, 3_600_000)
    t0 = time.perf_counter()
    for i in range(pairs):
        rid = f"r{i}"
        await ledger.reserve([scope], rid, 660.0, 1_000_000, None)
        await ledger.settle(Charge(rid, 123_456, (scope.key,), (scope.ttl_ms,), "gw:{bench}:spend:2026-01-01",
                                   86_400_000, (("m:usd", 123_456), ("m:n", 1), ("m:in", 9), ("m:out", 20))))
    return pairs / (time.perf_counter() - t0)


def bench_gateway(name: str, state: str, up: int, tmp: Path, args: argparse.Namespace) -> list[tuple]:
    policy = tmp / f"{name}.yaml"
    policy.write_text(textwrap.dedent(POLICY.format(state=state, up=up)))
    rows = []
    with running_gateway(policy) as port:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        for tenant in ("free", "budgeted"):
            auth = {"Authorization": f"Bearer sk-{tenant}"}
            httpx.post(url, content=BODY, headers={**auth, "Content-Type": "application/json"}).raise_for_status()
            lua = tmp / f"{name}-{tenant}.lua"
            lua.write_text(post_lua(BODY, auth))
            r = run_wrk(url, args.duration, args.connections, lua)
            rows.append((name, "no budget" if tenant == "free" else "budget", r))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=5000)
    args = ap.parse_args()
    if tool := missing_tool("wrk", "redis-server"):
        print(f"{tool} not found (apt-get install {tool})")
        return 1
    tmp = Path(tempfile.mkdtemp())
    up, redis_port = free_port(), free_port()
    procs = [spawn_mock(up), start_redis(redis_port, tmp)]
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    try:
        wait_port(up)
        wait_port(redis_port)
        memory_rate = asyncio.run(ledger_pairs(Ledger(MemoryBackend()), args.pairs))

        async def on_redis() -> float:
            backend = RedisBackend(redis_url, timeout_ms=2000)
            try:
                return await ledger_pairs(Ledger(backend), args.pairs)
            finally:
                await backend.close()

        redis_rate = asyncio.run(on_redis())
        print(f"{'ledger backend':<15} {'reserve+settle pairs/s':>23} {'us per pair':>12}")
        for name, rate in (("in-process", memory_rate), ("redis", redis_rate)):
            print(f"{name:<15} {rate:>23.0f} {1e6 / rate:>12.1f}")
        rows = bench_gateway("in-process", "backend: memory", up, tmp, args)
        rows += bench_gateway("redis", f"backend: redis, redis_url: '{redis_url}'", up, tmp, args)
        print(f"\n{'backend':<11} {'tenant':<10} {WRK_COLUMNS}")
        for name, label, r in rows:
            print(f"{name:<11} {label:<10} {wrk_cells(r)}")
        print(f"(wrk -t2 -c{args.connections} {args.duration}s on CPU 1; gateway + mock + redis on CPU 0)")
    finally:
        stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
