"""The rate limiter's added latency per request: in-process state and Redis, median and p99.

What is timed is exactly what the limiter adds to a request that reaches an upstream: the stage's
``limit_requests`` (rpm + concurrency + token peek, one script call), ``admit`` (token reservation,
one call), ``on_response`` (headers) and ``complete`` (slot release + token settlement, one call),
on a context as the earlier stages leave it. A tenant limited by rpm, tpm and concurrency, plus a
per-key rpm, is the case measured (the widest script call); limits are high enough never to refuse.

- sequential: one request at a time (the pure cost, Redis round trips on loopback included);
- concurrent: ``--concurrency`` requests in flight on one event loop (uvloop), as under load. With
  Redis this is bound by the client's CPU (about 0.15 ms of redis-py per call, three calls per
  request; Redis itself spends ~26 us per script call), so its figures are mostly queueing.

Redis is a private ``redis-server`` on a free port (no persistence), started and stopped here.
Usage: ``python benchmarks/bench_ratelimit.py [--requests 5000] [--concurrency 32]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import free_port, missing_tool, start_redis, stop_all, wait_port  # noqa: E402
from gateway.context import RequestContext  # noqa: E402
from gateway.policy.loader import load_policy_text  # noqa: E402
from gateway.services import build_services  # noqa: E402
from gateway.stages.ratelimit import RateLimitStage  # noqa: E402
from gateway.usage import Usage  # noqa: E402

POLICY = """
version: 1
state: {{{state}}}
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:9/v1", api_key: sk-up}}
models:
  m:
    context_window: 8000
    deployments: [{{provider: up, model: m}}]
tenants:
  bench:
    api_keys: [sk-bench]
    models: [m]
    rate_limit: {{rpm: 100000000, tpm: 1000000000, concurrency: 100000, per_key: {{rpm: 100000000}}}}
"""


def _context(policy: Any, n: int) -> RequestContext:
    tenant = policy.tenants["bench"]
    ctx = RequestContext(request_id=f"r{n}", endpoint="chat", policy=policy, request=None,  # type: ignore[arg-type]
                         started=0.0, started_wall=0.0)
    ctx.tenant, ctx.api_key = tenant, tenant.api_keys[0]
    ctx.public_model, ctx.model = "m", policy.models["m"]
    ctx.prompt_tokens_est, ctx.max_tokens = 20, 100
    return ctx


async def _one(stage: RateLimitStage, policy: Any, n: int) -> float:
    ctx = _context(policy, n)
    start = time.perf_counter()
    assert await stage.limit_requests(ctx) is None
    assert await stage.admit(ctx) is None
    ctx.attempts.append(None)  # type: ignore[arg-type]  # an upstream was called
    ctx.usage = Usage(prompt_tokens=18, completion_tokens=40)
    await stage.on_response(ctx, None)  # type: ignore[arg-type]
    await stage.complete(ctx, None)
    return time.perf_counter() - start


async def _measure(state: str, requests: int, concurrency: int) -> dict[str, list[float]]:
    policy = load_policy_text(POLICY.format(state=state), source="bench.yaml")
    services = build_services(policy)  # the backend wrapped in its metrics, as the gateway runs it
    backend = services.backend
    stage = RateLimitStage(services)
    stage.on_policy(policy)
    try:
        for i in range(200):  # warm-up: connections, script cache
            await _one(stage, policy, -i)
        sequential = [await _one(stage, policy, i) for i in range(requests)]
        sem = asyncio.Semaphore(concurrency)

        async def bounded(i: int) -> float:
            async with sem:
                return await _one(stage, policy, requests + i)

        concurrent = await asyncio.gather(*(bounded(i) for i in range(requests)))
        assert stage.stats.backend_errors == 0 and stage.stats.outcomes.get("over_limit", 0) == 0
    finally:
        await backend.close()
    return {"sequential": sequential, f"concurrent x{concurrency}": list(concurrent)}


def _row(name: str, mode: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"| {name:<9} | {mode:<14} | {statistics.median(ms):>8.3f} | {p99:>8.3f} | {len(ms):>6} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    if missing_tool("redis-server"):
        sys.exit("redis-server not found (apt-get install redis-server)")
    results = {}
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        redis = start_redis(port, Path(folder), cpu=None)  # unpinned, like the benchmark itself
        try:
            wait_port(port)
            results["memory"] = asyncio.run(_measure("backend: memory", args.requests, args.concurrency))
            redis_state = f"backend: redis, redis_url: 'redis://127.0.0.1:{port}/0', timeout_ms: 2000"
            results["redis"] = asyncio.run(_measure(redis_state, args.requests, args.concurrency))
        finally:
            stop_all([redis])
    print("Rate limiter added latency per request (limit_requests + admit + on_response + complete)")
    print("| backend   | mode           | p50 ms   | p99 ms   | n      |")
    print("|-----------|----------------|----------|----------|--------|")
    for name, modes in results.items():
        for mode, samples in modes.items():
            print(_row(name, mode, samples))


if __name__ == "__main__":
    main()
