"""A client that leaves while ``complete`` waits for Redis does not cut ``complete`` short.

On a shared state backend ``complete`` sends one fused call (the budget's settle, the concurrency
release, the feedback record) after the answer was written, then runs the finishers and the later
stages' ``complete`` (``ObserveStage``: the request metrics, the access log). A client that reads a
streamed answer to its end and closes its connection at once cancels the handler
(``handler_cancellation``) while that call waits; ``complete`` must still run to its end. The call is
held back by pausing the real redis-server's writes (``CLIENT PAUSE ... WRITE``: a script may write,
so EVALSHA waits) between ``admit`` and the answer: the mock upstream answers only once the pause is on.

Unshielded, the call itself was already on its way to Redis and is applied there once the pause ends;
what the cancellation loses is everything after it in this process: the finishers and the later
stages, so the request is missing from the metrics and the access log.
"""

from __future__ import annotations

import asyncio
import socket
import textwrap
from collections.abc import Iterator

import orjson
import pytest
import redis
from aiohttp import web

from gateway.http.server import DRAIN
from tests.support.budget import ADMIN_KEY, budget
from tests.support.harness import ServerThread, eventually
from tests.support.mock_openai import Fault, MockOpenAI
from tests.support.prom import scrape

PAUSE_MS = 5000  # the longest Redis may hold the call; the test lifts the pause as soon as the client left
REQUEST_ID = "shield-1"


class GatedUpstream(MockOpenAI):
    """Answers a request only once ``gate`` is set: until then its ``admit`` is known to be done."""

    def __init__(self) -> None:
        super().__init__("gated")
        self.gate = asyncio.Event()

    async def _prelude(self, request: web.Request) -> tuple[dict, Fault]:
        found = await super()._prelude(request)
        await self.gate.wait()
        return found


@pytest.fixture
def gated(servers: ServerThread) -> Iterator[GatedUpstream]:
    mock = servers.call(GatedUpstream().start())
    yield mock
    servers.loop.call_soon_threadsafe(mock.gate.set)
    servers.call(mock.stop())


def policy(upstream: str, redis_url: str) -> str:
    """A budget, one concurrent request and feedback records: ``complete`` always makes its call."""
    return textwrap.dedent(f"""\
        version: 1
        state: {{backend: redis, redis_url: "{redis_url}", timeout_ms: 20000}}
        admin: {{api_keys: [{ADMIN_KEY}]}}
        providers:
          up: {{type: openai, base_url: "{upstream}", api_key: sk-up}}
        models:
          small: {{price: {{input: 100, output: 200}}, deployments: [{{provider: up, model: small-a}}]}}
        tenants:
          acme:
            api_keys: [sk-acme]
            models: "*"
            audit: {{feedback_ttl_s: 600}}
            rate_limit: {{concurrency: 1}}
            budget: {{usd: 100}}
        """)


def stream_request(port: int) -> bytes:
    body = orjson.dumps({"model": "small", "messages": [{"role": "user", "content": "hello there"}],
                         "max_tokens": 8, "stream": True})
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer sk-acme\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nx-request-id: {REQUEST_ID}\r\n\r\n")
    return head.encode() + body


def read_stream(sock: socket.socket) -> bytes:
    """The whole chunked answer: up to the terminating zero-length chunk."""
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return data


def test_a_client_leaving_while_complete_waits_for_redis_does_not_cut_it_short(
        make_gateway, gated, servers, redis_url) -> None:
    gw = make_gateway(policy(gated.url, redis_url))
    drain = gw.app[DRAIN]
    r = redis.Redis.from_url(redis_url)
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        sock.sendall(stream_request(gw.port))
        assert eventually(lambda: gated.calls == 1)  # admitted: its budget and concurrency are reserved
        r.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        try:
            servers.loop.call_soon_threadsafe(gated.gate.set)
            answer = read_stream(sock)
            assert answer.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in answer
            assert len(drain) == 1  # the answer is out; its ``complete`` waits for the paused Redis
            sock.close()  # the client leaves: aiohttp cancels the handler
            assert eventually(lambda: len(drain) == 0)
        finally:
            r.execute_command("CLIENT", "UNPAUSE")
        # ``ObserveStage``, the last ``complete``: the request is counted (a cut ``complete`` never got there)
        assert eventually(lambda: scrape(gw.url).value("llm_gateway_requests_total", tenant="acme", model="small",
                                                       status_class="2xx", outcome="ok") == 1), \
            "the request is missing from llm_gateway_requests_total: its complete was cut short"
        assert scrape(gw.url).value("llm_gateway_cost_usd_total", tenant="acme") > 0
        # the call itself (already sent when the client left): the record stored, the budget settled
        assert eventually(lambda: r.exists(f"gw:{{acme}}:req:{REQUEST_ID}") == 1)
        spent = budget(gw.url)["budget"]
        assert spent["spent_usd"] > 0 and spent["reserved_usd"] == 0
        follow = gw.client("sk-acme").chat.completions.with_raw_response.create(
            model="small", messages=[{"role": "user", "content": "again"}], max_tokens=4)
        assert follow.http_response.status_code == 200  # concurrency 1: the slot was released
    finally:
        sock.close()
        r.close()
