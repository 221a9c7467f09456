"""Overload: concurrent cache misses drive Redis calls into timeouts (``timeout_ms: 20``); every
served request is still charged exactly once once the replays are done (real redis-server)."""

from __future__ import annotations

import asyncio

import openai
import redis

from tests.support.budget import PRICES, budget_policy
from tests.support.harness import eventually
from tests.support.mock_openai import answer_for, usage_for

N, CONCURRENCY = 400, 100


def pico_cost(body: dict) -> int:
    usage = usage_for(body, answer_for(body))
    inp, out = PRICES["small"]
    return int(usage["prompt_tokens"] * inp * 10**6 + usage["completion_tokens"] * out * 10**6)


async def hammer(client: openai.AsyncOpenAI) -> dict[str, int]:
    gate, codes = asyncio.Semaphore(CONCURRENCY), {"ok": 0, "error": 0}

    async def one(i: int) -> None:
        async with gate:
            try:
                await client.chat.completions.create(
                    model="small", max_tokens=5, messages=[{"role": "user", "content": f"question number {i}"}])
                codes["ok"] += 1
            except openai.APIError:
                codes["error"] += 1

    await asyncio.gather(*(one(i) for i in range(N)))
    await client.close()
    return codes


def test_timeouts_under_load_charge_each_served_request_once(make_gateway, upstream, redis_server):
    state = f"backend: redis\n  redis_url: {redis_server.url}\n  on_backend_error: local"
    gw = make_gateway(budget_policy(upstream.url, budget="{usd: 1000}", state=state).replace(
        "timeout_ms: 5000", "timeout_ms: 20"))
    codes = asyncio.run(hammer(gw.aclient("sk-acme", timeout=60)))
    service = gw.services.budget
    drained = eventually(lambda: not len(service.pending), 60)
    r = redis.Redis.from_url(redis_server.url)
    [key] = [k for k in r.keys("*:bud:t:*") if not k.endswith(b":exp")]
    spent = int(r.hget(key, "spent"))
    day = {k.decode(): int(v) for k, v in r.hgetall(next(iter(r.keys("*:spend:*")))).items()}
    expected = sum(pico_cost(body) for body in upstream.requests)
    print(f"\n{N} requests, {CONCURRENCY} at once: {codes}; upstream calls {upstream.calls}; ledger n "
          f"{day.get('small:n')}, pico {spent}, independent {expected}; drained {drained}; "
          f"counts {dict(service.counts)}")
    assert drained and upstream.calls == codes["ok"] == day["small:n"]
    assert spent == expected == day["small:usd"]
