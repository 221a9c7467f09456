"""CPU of the budget alone per request on the memory backend: ``BudgetStage.admit``, the admit call's
reservation, ``complete`` and the settle, as the full-policy hot path runs them (issue 15).

The hot-path benchmark (``bench_hot_path.py``) sees the budget as a few percent of a request, inside
its round-to-round noise; this drives the stage alone, in-process, with the state batch the pipeline
gives it (one ``StateBatch`` per request, flushed on the memory backend after each phase): the
policy's tenant (a ``total`` budget) and model, the same request each time. The figure is
``time.thread_time`` per request, the request context's construction included (the same in every tree).

Compare trees as ``bench_hot_path.py`` does, alternated, each ``--tree`` in child processes that
import the gateway from it::

    python benchmarks/bench_budget_stage.py --tree /tmp/before --tree . --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("BENCH_TREE") or str(ROOT))  # the tree under test (a child's)
from benchmarks.runner.policies import gateway_policy  # noqa: E402


async def _requests(n: int) -> float:
    """Gateway CPU microseconds per request for ``n`` requests (after a warm-up of ``n // 5``)."""
    from gateway.context import RequestContext
    from gateway.policy.loader import load_policy_text
    from gateway.services import build_services
    from gateway.stages.budget import BudgetStage
    from gateway.stages.state_batch import StateBatch
    from gateway.usage import Usage

    policy = load_policy_text(gateway_policy(1), "bench.yaml", env={})
    services = build_services(policy)
    stage = BudgetStage(services)
    stage.on_policy(policy)
    backend = services.backend
    tenant = policy.tenants["bench"]
    key = tenant.api_keys[0]
    model = policy.models["m"]
    usage = Usage(prompt_tokens=12, completion_tokens=9)

    async def one(i: int) -> None:
        ctx = RequestContext(f"r{i}", "chat", policy, None, 0.0, 0.0)  # type: ignore[arg-type]
        ctx.tenant, ctx.api_key, ctx.public_model, ctx.model, ctx.prompt_tokens_est = tenant, key, "m", model, 12
        batch = ctx.state_batch = StateBatch()
        verdict = stage.admit(ctx)
        if inspect.iscoroutine(verdict):
            verdict = await verdict
        verdict = verdict or await batch.flush(backend, "admit")
        assert verdict is None, verdict
        ctx.usage = usage
        pending = stage.complete(ctx, None)
        if pending is not None:
            await pending
        await batch.flush(backend, "complete")

    for i in range(n // 5):
        await one(-i - 1)
    start = time.thread_time()
    for i in range(n):
        await one(i)
    return (time.thread_time() - start) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="a source tree to measure (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(asyncio.run(_requests(args.requests)))
        return 0
    from benchmarks.common import (  # the parent's own tree (a child's may be older)
        alternate_trees,
        print_trees,
    )

    runs = alternate_trees(__file__, args.tree or [str(ROOT)], args.rounds, ["--requests", str(args.requests)])
    if runs is None:
        return 1
    print_trees("budget-stage CPU us/request per round", {t: [float(r[0]) for r in rs] for t, rs in runs.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
