"""Four gateway replicas on one real Redis, 200 concurrent requests against a small budget: the
recorded spend equals the sum of the real per-request costs and never exceeds the budget."""

from __future__ import annotations

import asyncio
import random

import openai
import pytest

from tests.support.budget import budget, budget_policy, served_cost, spend

BUDGET_USD = 1.0
VOCAB = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma", "omega"]


async def one_request(client: openai.AsyncOpenAI, rng: random.Random) -> str:
    words = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(10, 60)))
    kw = {"model": "small", "messages": [{"role": "user", "content": words}], "max_tokens": rng.randint(1, 80)}
    try:
        if rng.random() < 0.5:
            await client.chat.completions.create(**kw)
        else:
            options = {"include_usage": True} if rng.random() < 0.5 else None
            stream = await client.chat.completions.create(**kw, stream=True, stream_options=options)
            async for _ in stream:
                pass
    except openai.RateLimitError as err:
        assert err.code == "insufficient_quota"
        return "refused"
    return "ok"


async def test_four_replicas_200_concurrent_requests_exact_and_never_over(make_gateway, upstream, redis_url):
    policy = budget_policy(upstream.url, budget=f"{{usd: {BUDGET_USD}, period: monthly}}",
                           state=f"backend: redis\n  redis_url: {redis_url}")
    gateways = [make_gateway(policy, name=f"replica{i}.yaml") for i in range(4)]
    clients = [gw.aclient("sk-acme", timeout=60.0) for gw in gateways]
    rng = random.Random(20260101)
    try:
        results = await asyncio.gather(*(one_request(clients[i % 4], random.Random(rng.random()))
                                         for i in range(200)))
        # a second burst drains what the first left, so the budget is (nearly) used up
        results += await asyncio.gather(*(one_request(clients[i % 4], random.Random(rng.random()))
                                          for i in range(200)))
    finally:
        for client in clients:
            await client.close()
    ok, refused = results.count("ok"), results.count("refused")
    assert ok + refused == 400 and ok > 20 and refused > 200
    assert upstream.calls == ok  # refused requests never reached the upstream
    expected = sum(served_cost(body, "small") for body in upstream.requests)
    for gw in gateways:  # every replica reads the same shared ledger
        s, b = spend(gw.url), budget(gw.url)["budget"]
        assert s["requests"] == ok and s["estimated_requests"] == 0
        assert s["spent_usd"] == pytest.approx(expected, abs=1e-9)
        assert b["spent_usd"] == pytest.approx(expected, abs=1e-9)
        assert b["spent_picousd"] == s["spent_picousd"]
        assert b["reserved_usd"] == 0
    assert BUDGET_USD * 0.75 < expected <= BUDGET_USD
    print(f"\n2 x 200 concurrent on 4 replicas: {ok} served, {refused} refused, spent ${expected:.9f} of ${BUDGET_USD}")
