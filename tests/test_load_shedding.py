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
import openai
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


ADAPTIVE = "server: {probe_port: 0, adaptive_limit: {target_s: 0.2, min: 2, max: 16, initial: 8, backoff: 0.5, " \
           "window_s: 30}}"


async def _wave(gw, n: int) -> list[tuple[int, float, str | None]]:
    """``n`` chat completions at once through the SDK: (status, seconds, retry-after) each."""
    client = gw.aclient("sk-acme")

    async def one() -> tuple[int, float, str | None]:
        start = time.monotonic()
        try:
            await client.chat.completions.create(model="small", messages=BODY["messages"])
            return 200, time.monotonic() - start, None
        except openai.APIStatusError as err:
            return err.status_code, time.monotonic() - start, err.response.headers.get("retry-after")

    try:
        return await asyncio.gather(*(one() for _ in range(n)))
    finally:
        await client.close()


def test_the_adaptive_limit_shrinks_on_slow_answers_and_sheds_fast_while_the_probe_port_answers(make_gateway,
                                                                                                 upstream):
    from gateway.http.runner import PROBE_RUNNER

    upstream.default = Fault(delay_s=1.0)  # every answer 5x over target_s
    gw = make_gateway(basic_policy(upstream.url, defaults=ADAPTIVE))
    probe = f"http://127.0.0.1:{gw.app[PROBE_RUNNER].addresses[0][1]}"
    assert scrape(probe).value("llm_gateway_adaptive_concurrency_limit") == 8
    first = asyncio.run(_wave(gw, 8))  # all 8 admitted; all slow: the limit is halved once (one window)
    assert [r[0] for r in first] == [200] * 8
    assert scrape(probe).value("llm_gateway_adaptive_concurrency_limit") == 4

    async def wave_and_probes() -> tuple[list, list[int]]:
        wave = asyncio.create_task(_wave(gw, 8))
        await asyncio.sleep(0.3)  # 4 working on the upstream, 4 already answered 503
        async with httpx.AsyncClient(timeout=5) as client:
            probes = [(await client.get(probe + path)).status_code for path in ("/healthz", "/readyz", "/metrics")]
        return await wave, probes

    second, probes = asyncio.run(wave_and_probes())
    ok = [r for r in second if r[0] == 200]
    shed = [r for r in second if r[0] == 503]
    metrics = scrape(probe)
    print(f"\nadaptive limit 8 -> 4 after 8 answers of 1 s (target 0.2 s); next 8 at once: {len(ok)} x 200, "
          f"{len(shed)} x 503 within {max(r[1] for r in shed) * 1000:.1f} ms; probe port {probes}; "
          f"limit now {metrics.value('llm_gateway_adaptive_concurrency_limit'):g}")
    assert len(ok) == 4 and len(shed) == 4
    assert all(r[1] < 1.0 and r[2] == "1" for r in shed)  # answered before any upstream could have
    assert probes == [200, 200, 200]
    assert metrics.value("llm_gateway_requests_shed_total", reason="adaptive_limit") == 4
    assert upstream.calls == 12
