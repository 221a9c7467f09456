"""The rate limiter's own CPU per request on the memory backend, as the gateway runs it; trees alternated.

What runs is the ``RateLimitStage`` of ``bench_hot_path.py``'s policy (a tenant with rpm, tpm and
concurrency; memory backend behind its metrics, ``build_services``) on contexts as the earlier
stages leave them, with the per-phase state batch flushed as ``StateBatchStage`` does:

- miss (default): ``limit_requests`` (defers to admit: no cache), ``admit`` + the batch's fused
  call, ``on_response`` (headers), ``complete`` + its fused call (release and settle);
- ``--hits``: cache on: ``limit_requests`` takes rpm and concurrency in a call of its own, then
  ``on_response`` and ``complete`` (the slot's release).

Sixteen requests are in flight (slots held), after 20,000 requests of warm-up (a minute's log of
some size). The figure is ``time.thread_time`` per request, median of ``--rounds`` rounds, each
tree in a child process of its own, alternated::

    python benchmarks/bench_ratelimit_cpu.py --tree /tmp/before --tree . [--hits] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("BENCH_TREE") or str(ROOT))  # the tree under test (a child's)

POLICY = """
version: 1
providers:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key: sk-up}
models:
  m:
    context_window: 8000
    deployments: [{provider: up, model: m}]
cache: {enabled: CACHE, ttl_s: 3600}
tenants:
  bench:
    api_keys: [sk-bench]
    models: [m]
    rate_limit: {rpm: 100000000, tpm: 100000000000, concurrency: 1000000}
"""
IN_FLIGHT = 16


async def _rounds(requests: int, rounds: int, hits: bool) -> list[float]:
    from gateway.context import RequestContext
    from gateway.policy.loader import load_policy_text
    from gateway.services import build_services
    from gateway.stages.ratelimit import RateLimitStage
    from gateway.stages.state_batch import StateBatch
    from gateway.usage import Usage

    policy = load_policy_text(POLICY.replace("CACHE", "true" if hits else "false"), source="bench.yaml")
    services = build_services(policy)
    backend = services.backend
    stage = RateLimitStage(services)
    stage.on_policy(policy)
    tenant = policy.tenants["bench"]
    pending: deque[Any] = deque()

    async def one(n: int) -> None:
        ctx = RequestContext(request_id=f"r{n}", endpoint="chat", policy=policy, request=None,  # type: ignore[arg-type]
                             started=0.0, started_wall=0.0)
        ctx.tenant, ctx.api_key, ctx.public_model, ctx.model = tenant, tenant.api_keys[0], "m", policy.models["m"]
        ctx.prompt_tokens_est, ctx.max_tokens = 20, 100
        ctx.state_batch = StateBatch()
        assert await stage.limit_requests(ctx) is None
        if hits:
            ctx.cache_status = "HIT"
        else:
            assert await stage.admit(ctx) is None
            assert await ctx.state_batch.flush(backend, "admit") is None
            ctx.attempts.append(None)  # type: ignore[arg-type]  # an upstream was called
            ctx.usage = Usage(prompt_tokens=18, completion_tokens=40)
        pending.append(ctx)
        if len(pending) > IN_FLIGHT:
            done = pending.popleft()
            await stage.on_response(done, None)  # type: ignore[arg-type]
            await stage.complete(done, None)
            await done.state_batch.flush(backend, "complete")

    for i in range(20_000):
        await one(-i - 1)
    out = []
    for r in range(rounds):
        start = time.thread_time()
        for i in range(requests):
            await one(r * requests + i)
        out.append((time.thread_time() - start) / requests * 1e6)
    assert stage.stats.outcomes.get("over_limit", 0) == 0 and stage.stats.backend_errors == 0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], help="a source tree to measure (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--hits", action="store_true", help="the cache-hit path (request limits and release only)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import uvloop

        print(statistics.median(uvloop.run(_rounds(args.requests, 3, args.hits))))
        return 0
    from benchmarks.common import (  # the parent's own tree (a child's may be older)
        alternate_trees,
        print_trees,
    )

    child = ["--requests", str(args.requests), *(["--hits"] if args.hits else [])]
    runs = alternate_trees(__file__, args.tree or [str(ROOT)], args.rounds, child, cpu=None)
    if runs is None:
        return 1
    print_trees(f"limiter CPU us/request per round ({'hit' if args.hits else 'miss'})",
                {t: [float(r[0]) for r in rs] for t, rs in runs.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
