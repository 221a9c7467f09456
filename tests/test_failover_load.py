"""2,000 requests, 10% injected upstream failures on two deployments: each one answered or dead-lettered."""

from __future__ import annotations

import asyncio
import random

import openai

from tests.support.failover_policy import failover_policy
from tests.support.mock_openai import Fault

TOTAL = 2000
CONCURRENCY = 50
FAILURE_RATE = 0.10
FAULTS = (Fault(500), Fault(502), Fault(503), Fault(reset=True))


def faulty_script(seed: int, n: int) -> list[Fault]:
    rng = random.Random(seed)
    return [rng.choice(FAULTS) if rng.random() < FAILURE_RATE else Fault() for _ in range(n)]


async def test_two_thousand_requests_with_ten_percent_failures(make_gateway, upstream, backup, tmp_path):
    upstream.push(*faulty_script(1, TOTAL * 2))
    backup.push(*faulty_script(2, TOTAL * 2))
    gw = make_gateway(failover_policy(upstream.url, backup.url, dlq_path=str(tmp_path / "dlq.jsonl"),
                                      strategy="weighted", retry="{attempts: 1, backoff_ms: 0}",
                                      breaker="{failures: 5, cooldown_s: 30}", dlq_max=TOTAL,
                                      first_byte_s=10.0))  # injected faults fail over, not a slow machine's start
    client = gw.aclient("sk-acme", timeout=30.0)
    gate = asyncio.Semaphore(CONCURRENCY)
    outcomes = {"ok": 0, "failed": 0, "other": 0}

    async def one(i: int) -> None:
        async with gate:
            messages = [{"role": "user", "content": f"request {i}"}]
            try:
                if i % 4 == 0:
                    stream = await client.chat.completions.create(model="chat", messages=messages, stream=True)
                    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
                else:
                    out = await client.chat.completions.create(model="chat", messages=messages)
                    text = out.choices[0].message.content
                outcomes["ok" if text == f"Echo: request {i}" else "other"] += 1
            except openai.InternalServerError as err:
                outcomes["failed" if err.status_code == 503 else "other"] += 1

    await asyncio.gather(*(one(i) for i in range(TOTAL)))
    await client.close()
    queue = gw.services.dlq
    entries = gw.thread.call(queue.all_entries())
    failed_attempts = upstream.calls + backup.calls - outcomes["ok"]
    print(f"\n{TOTAL} requests: {outcomes['ok']} answered, {outcomes['failed']} dead-lettered "
          f"(queue depth {len(entries)}), {outcomes['other']} other; upstream attempts: primary {upstream.calls}, "
          f"backup {backup.calls}, failed attempts {failed_attempts}; breakers {gw.services.breakers.states()}")
    assert outcomes["other"] == 0
    assert outcomes["ok"] + outcomes["failed"] == TOTAL
    assert len(entries) == outcomes["failed"] and queue.dropped == 0
    assert outcomes["ok"] >= TOTAL * 0.95
    stored = [r["body"]["messages"][0]["content"] for _, r in entries]
    assert len(set(stored)) == len(stored)  # each failed request once, with the body it was sent with
    assert all(r["action"] == "error" and r["attempts"] for _, r in entries)
    assert upstream.calls > TOTAL * 0.2 and backup.calls > TOTAL * 0.2  # weighted: both served
