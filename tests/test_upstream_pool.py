"""Waiting for a pooled upstream connection is its own timeout (``timeouts.pool_s``) and metric.

Was (issue 14): 1,000 concurrent streams got 488 x 503 after ~4.5 s: the pool (256) was full and the
wait for a slot counted against ``first_byte_s``. Here 300 streams of ~1.5 s share a pool of 100 with
``first_byte_s: 2``: the later ones wait longer than a first byte is allowed, then all succeed. A pool
that stays full past ``pool_s`` fails the attempt as a pool timeout, counted apart.
"""

from __future__ import annotations

import asyncio
import time

import openai

from tests.support.mock_openai import Fault
from tests.support.prom import scrape


def _policy(url: str, max_connections: int, pool_s: float, attempts: int = 3) -> str:
    return f"""
version: 1
providers:
  upstream:
    type: openai
    base_url: {url}
    api_key: sk-upstream-secret
    max_connections: {max_connections}
    timeouts: {{pool_s: {pool_s}, connect_s: 3, first_byte_s: 2, total_s: 60}}
models:
  small:
    deployments: [{{provider: upstream, model: small-a}}]
retry: {{attempts: {attempts}}}
logging: {{access_log: 'off'}}
tenants:
  acme:
    api_keys: [sk-acme]
    models: "*"
"""


async def _one(client: openai.AsyncOpenAI) -> tuple[str, float]:
    start = time.monotonic()
    try:
        stream = await client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "pool test"}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    except openai.APIError as err:
        return f"error {getattr(err, 'status_code', '')}", time.monotonic() - start
    return text, time.monotonic() - start


async def _many(gw, n: int) -> list[tuple[str, float]]:
    client = gw.aclient("sk-acme", timeout=60)
    try:
        return await asyncio.gather(*(_one(client) for _ in range(n)))
    finally:
        await client.close()


def test_300_streams_wait_for_a_pool_of_100_and_all_succeed(make_gateway, upstream):
    upstream.default = Fault(chunk_delay_s=0.5)  # "Echo: pool test": 3 chunks, ~1.5 s per stream
    gw = make_gateway(_policy(upstream.url, max_connections=100, pool_s=20))
    start = time.monotonic()
    results = asyncio.run(_many(gw, 300))
    took = time.monotonic() - start
    s = scrape(gw.url)
    waited = s.value("llm_gateway_upstream_pool_wait_seconds_count", provider="upstream")
    wait_sum = s.value("llm_gateway_upstream_pool_wait_seconds_sum", provider="upstream")
    over_2_5s = waited - s.value("llm_gateway_upstream_pool_wait_seconds_bucket", provider="upstream", le="2.5")
    errors = s.value("llm_gateway_upstream_errors_total")
    ok = [r for r in results if r[0] == "Echo: pool test"]
    print(f"\n300 streams, pool of 100, first_byte_s 2: {len(ok)} ok in {took:.1f} s (slowest "
          f"{max(r[1] for r in results):.1f} s); {waited:g} waited for the pool (mean {wait_sum / max(waited, 1):.2f} s, "
          f"{over_2_5s:g} longer than first_byte_s); upstream at most {upstream.max_in_flight} at once; "
          f"upstream errors {errors:g}")
    assert len(ok) == 300
    assert upstream.max_in_flight <= 100 and upstream.calls == 300
    assert over_2_5s > 0  # waits longer than first_byte_s, and yet no timeout
    assert errors == 0


def test_a_pool_full_past_pool_s_is_a_pool_timeout_counted_apart(make_gateway, upstream):
    upstream.default = Fault(chunk_delay_s=0.5)
    gw = make_gateway(_policy(upstream.url, max_connections=2, pool_s=0.3, attempts=1))
    results = asyncio.run(_many(gw, 6))
    s = scrape(gw.url)
    timeouts = s.value("llm_gateway_upstream_pool_timeouts_total", provider="upstream")
    outcomes = sorted(r[0] for r in results)
    print(f"\npool of 2, pool_s 0.3, 6 streams of ~1.5 s: {outcomes}; pool timeouts {timeouts:g}, "
          f"failed within {max(r[1] for r in results if r[0].startswith('error')):.2f} s")
    assert outcomes.count("Echo: pool test") == 2 and timeouts == 4
    assert upstream.calls == 2
