"""Bounded in-flight work: past ``server.max_in_flight`` a request gets a fast 503 with ``retry-after``.

Was (issue 14): thousands of connections queued without bound (mean latency 1.85 s, client timeouts)
and ``/healthz`` stalled. Here 4 slots, an upstream that takes 1 s, 12 requests at once: 4 answered,
8 shed at once and counted, ``/healthz`` and ``/metrics`` fast meanwhile; a tenant's own
``concurrency`` limit still answers 429 below the global bound.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.support.mock_openai import Fault
from tests.support.policies import basic_policy
from tests.support.prom import scrape

BODY = {"model": "small", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def gw(make_gateway, upstream):
    upstream.default = Fault(delay_s=1.0)
    return make_gateway(basic_policy(upstream.url, defaults="server: {max_in_flight: 4}", extra_tenant="""
        gamma:
          api_keys: [sk-gamma]
          models: [small]
          rate_limit: {concurrency: 1}
    """))


async def _timed(client: httpx.AsyncClient, method: str, url: str, **kw) -> tuple[int, float, httpx.Response]:
    start = time.monotonic()
    resp = await client.request(method, url, **kw)
    return resp.status_code, time.monotonic() - start, resp


async def _burst(gw) -> tuple[list, list]:
    headers = {"authorization": "Bearer sk-acme"}
    async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=50)) as client:
        chats = [asyncio.create_task(_timed(client, "POST", gw.base_url + "/chat/completions", json=BODY,
                                            headers=headers)) for _ in range(12)]
        await asyncio.sleep(0.5)  # all 12 are in: 4 working, 8 answered
        probes = [await _timed(client, "GET", gw.url + path) for path in ("/healthz", "/readyz", "/metrics")]
        return await asyncio.gather(*chats), probes


def test_over_max_in_flight_is_a_fast_503_with_retry_after_and_probes_stay_fast(gw, upstream):
    chats, probes = asyncio.run(_burst(gw))
    ok = [c for c in chats if c[0] == 200]
    shed = [c for c in chats if c[0] == 503]
    shed_values = scrape(gw.url).value("llm_gateway_requests_shed_total", reason="max_in_flight")
    print(f"\nmax_in_flight 4, upstream 1 s, 12 at once: {len(ok)} x 200 in {min(c[1] for c in ok):.2f}-"
          f"{max(c[1] for c in ok):.2f} s, {len(shed)} x 503 in at most {max(c[1] for c in shed) * 1000:.1f} ms; "
          f"probes while full: " + ", ".join(f"{p[2].url.path} {p[0]} {p[1] * 1000:.1f} ms" for p in probes)
          + f"; shed counted {shed_values:g}; upstream saw {upstream.calls}")
    assert len(ok) == 4 and len(shed) == 8
    assert all(c[1] < 1.0 for c in shed)
    for _, _, resp in shed:
        assert resp.headers["retry-after"] == "1" and resp.json()["error"]["code"] == "overloaded"
    assert [p[0] for p in probes] == [200, 200, 200] and all(p[1] < 1.0 for p in probes)
    assert shed_values == 8 and upstream.calls == 4


async def _tenant_pair(gw) -> list:
    headers = {"authorization": "Bearer sk-gamma"}
    async with httpx.AsyncClient(timeout=15) as client:
        return await asyncio.gather(*(_timed(client, "POST", gw.base_url + "/chat/completions", json=BODY,
                                             headers=headers) for _ in range(2)))


def test_a_tenant_concurrency_limit_answers_429_with_retry_after_below_the_global_bound(gw):
    results = sorted(asyncio.run(_tenant_pair(gw)), key=lambda r: r[0])
    print(f"\ntenant concurrency 1, 2 at once: {[(r[0], round(r[1], 2)) for r in results]}")
    assert [r[0] for r in results] == [200, 429]
    assert results[1][1] < 1.0 and "retry-after" in results[1][2].headers
