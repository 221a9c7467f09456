"""``exchange.post`` (the lean upstream POST) end to end: a real ``OpenAIProvider`` against real loopback upstreams.

An aiohttp app records what arrives (headers, body, the client's port: one port is one connection);
raw asyncio servers answer what aiohttp would not (garbage, a 1xx, nothing at all).
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.errors import UpstreamError
from gateway.policy.model import ProviderSpec, Timeouts
from gateway.providers import exchange
from gateway.providers import openai as openai_provider
from gateway.providers.base import UpstreamRequest
from gateway.providers.openai import USER_AGENT, OpenAIProvider
from tests.support.loopback import LoopbackServer

pytestmark = pytest.mark.skipif(not openai_provider.LEAN, reason="this aiohttp keeps session.post")

KEY = "sk-exchange-secret"
COMPLETION = {"id": "c-1", "object": "chat.completion", "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
ANSWER = orjson.dumps(COMPLETION)


class Upstream(LoopbackServer):
    """``POST /{case}/chat/completions``: the case picks the answer; every call is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []
        self.gate = asyncio.Event()  # holds the rest of a slow stream until set

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 2**20)
        app.router.add_post("/{case}/chat/completions", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        case = request.match_info["case"]
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append({"case": case, "headers": request.headers, "body": await request.read(),
                          "port": peer[1] if peer else None})
        if case == "close":
            resp = web.Response(body=ANSWER, content_type="application/json")
            resp.force_close()
            return resp
        if case == "cookie":
            return web.Response(body=ANSWER, content_type="application/json",
                                headers={"Set-Cookie": "session=tenant-a; Path=/"})
        if case == "redirect":
            return web.Response(status=307, body=b"moved along",
                                headers={"Location": f"{self.url}/target/chat/completions"})
        if case == "gzip":
            return web.Response(body=gzip.compress(ANSWER), headers={"Content-Encoding": "gzip",
                                                                     "Content-Type": "application/json"})
        if case in ("stream", "slow"):
            return await self._stream(request, slow=case == "slow")
        return web.Response(body=ANSWER, content_type="application/json")

    async def _stream(self, request: web.Request, slow: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in ("Hel", "lo"):
            chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if slow:
                await self.gate.wait()
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def ports(self) -> list[int]:
        return [s["port"] for s in self.seen]


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[Upstream]:
    mock = await Upstream().start()
    yield mock
    mock.gate.set()
    await mock.stop()


class Raw:
    """A bare TCP upstream: reads each request whole, then writes ``reply(head)`` (``None``: hang up)."""

    def __init__(self, reply: Callable[[bytes], bytes | None]) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                self.requests.append(head + await reader.readexactly(length))
                out = self.reply(head)
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture
async def raw() -> AsyncIterator[Callable[[Callable[[bytes], bytes | None]], Awaitable[Raw]]]:
    servers: list[asyncio.Server] = []

    async def start(reply: Callable[[bytes], bytes | None]) -> Raw:
        upstream = Raw(reply)
        server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        servers.append(server)
        upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return upstream

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def make(base_url: str) -> OpenAIProvider:
    timeouts = Timeouts(connect_s=2.0, first_byte_s=5.0, total_s=10.0)
    return OpenAIProvider(ProviderSpec(name="up", type="openai", base_url=base_url, api_key=KEY, timeouts=timeouts,
                                       headers=(("x-static", "from-spec"),)))


def req(stream: bool = False, content: str = "hi", request_id: str = "req-1", **headers: str) -> UpstreamRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "stream": stream}
    return UpstreamRequest(endpoint="chat", body=body, stream=stream, request_id=request_id, headers=headers)


def ok_answer(_head: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)


async def call(provider: OpenAIProvider, case: str, base: str, **kw: Any) -> Any:
    provider._base = f"{base}/{case}"  # one provider (one pool) across cases: the case is the path's first segment
    return await provider.send(req(**kw))


async def sent_once(upstream: Upstream, request: UpstreamRequest) -> tuple[Any, dict, bytes]:
    """``request`` sent to ``/ok`` by a provider of its own: the answer, what the upstream saw, and the
    body as the provider encodes it."""
    provider = make(upstream.url)
    try:
        provider._base = f"{upstream.url}/ok"
        resp = await provider.send(request)
    finally:
        await provider.close()
    [seen] = upstream.seen
    return resp, seen, provider.encode(request)


async def test_sequential_calls_reuse_one_connection_until_an_answer_says_close(upstream: Upstream) -> None:
    provider = make(upstream.url)
    try:
        for case in ("ok", "ok", "ok", "close", "ok", "ok"):
            resp = await call(provider, case, upstream.url)
            assert resp.status == 200 and orjson.loads(resp.body) == COMPLETION
    finally:
        await provider.close()
    ports = upstream.ports()
    assert len(set(ports[:4])) == 1  # the answer with Connection: close still came on the kept connection
    assert ports[4] != ports[3] and ports[5] == ports[4]


@pytest.fixture(params=["exchange", "session"])
def either_post(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both POST paths of ``HTTPProvider._post``: ``exchange``, and the ``session.post`` an aiohttp without
    its hooks keeps; they must behave alike."""
    monkeypatch.setattr(openai_provider, "LEAN", request.param == "exchange")
    return request.param


async def test_cookies_an_upstream_sets_are_not_sent_back(upstream: Upstream, either_post: str) -> None:
    base = upstream.url.replace("127.0.0.1", "localhost")  # aiohttp's jar keeps no cookies for IP hosts
    provider = make(base)
    try:
        first = await call(provider, "cookie", base)
        second = await call(provider, "ok", base)
    finally:
        await provider.close()
    assert first.status == second.status == 200
    assert upstream.seen[0]["case"] == "cookie" and "Cookie" not in upstream.seen[1]["headers"]
    assert upstream.ports()[0] == upstream.ports()[1]  # same connection, same origin: only the jar could differ


async def test_a_redirect_is_the_answer_not_followed(upstream: Upstream, either_post: str) -> None:
    provider = make(upstream.url)
    try:
        resp = await call(provider, "redirect", upstream.url)
    finally:
        await provider.close()
    assert resp.status == 307 and resp.body == b"moved along"
    assert [s["case"] for s in upstream.seen] == ["redirect"]  # /target never called


async def test_a_gzip_answer_is_read_decompressed(upstream: Upstream) -> None:
    provider = make(upstream.url)
    try:
        resp = await call(provider, "gzip", upstream.url)
    finally:
        await provider.close()
    assert resp.status == 200 and orjson.loads(resp.body) == COMPLETION
    assert "gzip" in upstream.seen[0]["headers"]["Accept-Encoding"]


async def test_the_request_head_carries_host_port_length_and_the_providers_headers(upstream: Upstream) -> None:
    resp, seen, body = await sent_once(upstream, req(request_id="req-head-7", **{"x-forwarded-thing": "kept"}))
    assert resp.status == 200
    headers = seen["headers"]
    assert headers["Host"] == upstream.url.removeprefix("http://")  # 127.0.0.1:<port>
    assert seen["body"] == body
    assert headers["Content-Length"] == str(len(seen["body"])) and "Transfer-Encoding" not in headers
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["X-Request-Id"] == "req-head-7"
    assert headers["User-Agent"] == USER_AGENT
    assert headers["X-Static"] == "from-spec" and headers["X-Forwarded-Thing"] == "kept"
    assert headers["Content-Type"] == "application/json"


async def test_headers_the_exchange_owns_are_not_taken_from_the_caller(upstream: Upstream) -> None:
    provider = make(upstream.url)
    owned = {"Host": "evil.example", "Content-Length": "1", "Transfer-Encoding": "chunked", "Connection": "close"}
    try:
        first = await call(provider, "ok", upstream.url, **owned)
        second = await call(provider, "ok", upstream.url)
    finally:
        await provider.close()
    assert first.status == second.status == 200
    headers = upstream.seen[0]["headers"]
    assert headers.getall("Host") == [upstream.url.removeprefix("http://")]
    assert headers.getall("Content-Length") == [str(len(upstream.seen[0]["body"]))] and "Transfer-Encoding" not in headers
    assert "Connection" not in headers and upstream.ports()[1] == upstream.ports()[0]


async def test_a_header_value_with_a_newline_is_refused_before_anything_is_sent(raw: Any) -> None:
    server = await raw(ok_answer)
    provider = make(server.url)
    try:
        with pytest.raises(ValueError):
            await provider.send(req(**{"x-evil": "a\r\nX-Injected: 1"}))
        resp = await provider.send(req())  # the provider still works, and the server does record calls
    finally:
        await provider.close()
    assert resp.status == 200 and server.connections == 1 and len(server.requests) == 1  # only the second call's
    assert b"X-Injected" not in server.requests[0]


@pytest.mark.parametrize(("reply", "kind"), [
    (lambda _head: b"garbage\r\n\r\n", "protocol"),  # an answer that is not HTTP
    (lambda _head: None, "connect"),  # a hang-up without an answer
])
async def test_an_answer_that_is_not_http_or_none_is_an_upstream_error(raw: Any, reply: Callable, kind: str) -> None:
    server = await raw(reply)
    provider = make(server.url)
    try:
        with pytest.raises(UpstreamError) as err:
            await provider.send(req())
    finally:
        await provider.close()
    assert err.value.kind == kind and len(server.requests) == 1


async def test_a_large_body_arrives_whole(upstream: Upstream) -> None:
    resp, seen, body = await sent_once(upstream, req(content="".join(chr(0x41 + i % 26) for i in range(300_000))))
    assert resp.status == 200
    assert len(seen["body"]) > 300_000 and seen["body"] == body
    assert seen["headers"]["Content-Length"] == str(len(seen["body"]))


async def test_a_stream_read_to_its_end_gives_its_connection_back(upstream: Upstream) -> None:
    provider = make(upstream.url)
    try:
        resp = await call(provider, "stream", upstream.url, stream=True)
        assert resp.status == 200 and resp.is_stream
        chunks = [orjson.loads(e) async for e in resp.events]
        await resp.aclose()
        after = await call(provider, "ok", upstream.url)
    finally:
        await provider.close()
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "Hello"
    assert after.status == 200
    assert upstream.ports()[1] == upstream.ports()[0]


async def test_a_stream_closed_early_closes_its_connection(upstream: Upstream) -> None:
    provider = make(upstream.url)
    try:
        resp = await call(provider, "slow", upstream.url, stream=True)
        events = resp.events
        first = orjson.loads(await events.__anext__())
        await events.aclose()
        await resp.aclose()
        after = await call(provider, "ok", upstream.url)
    finally:
        await provider.close()
    assert first["choices"][0]["delta"]["content"] == "Hel" and after.status == 200
    assert upstream.ports()[1] != upstream.ports()[0]


async def test_an_interim_1xx_answer_is_skipped(raw: Any) -> None:
    server = await raw(lambda head: b"HTTP/1.1 100 Continue\r\n\r\n" + ok_answer(head))
    provider = make(server.url)
    try:
        first = await provider.send(req())
        second = await provider.send(req())
    finally:
        await provider.close()
    assert first.status == second.status == 200
    assert orjson.loads(first.body) == orjson.loads(second.body) == COMPLETION
    assert server.connections == 1 and len(server.requests) == 2


class LateEnd:
    """An upstream whose chunked SSE answer ends (``0\\r\\n\\r\\n``) ``end_after_s`` after its ``[DONE]``
    event, as a real server's often does; ``None``: the body never ends."""

    def __init__(self, end_after_s: float | None) -> None:
        self.end_after_s = end_after_s
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        event = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n'
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                if self.end_after_s is None:
                    await reader.read()  # hold the body open until the client closes
                    return
                await asyncio.sleep(self.end_after_s)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _streams(upstream: LateEnd, count: int) -> None:
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    provider = make(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        for _ in range(count):
            resp = await provider.send(req(stream=True))
            assert [orjson.loads(e)["choices"][0]["delta"]["content"] async for e in resp.events] == ["x"]
            await resp.aclose()
            await asyncio.sleep(0.15)  # past the late end (and past the shortened grace)
    finally:
        await provider.close()
        server.close()
        await server.wait_closed()


async def test_a_stream_whose_body_ends_after_its_last_event_keeps_its_connection() -> None:
    upstream = LateEnd(end_after_s=0.03)
    await _streams(upstream, 3)
    assert upstream.connections == 1  # closing at [DONE] would open one per stream


async def test_a_stream_whose_body_never_ends_is_closed_after_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exchange, "LINGER_S", 0.05)
    upstream = LateEnd(end_after_s=None)
    await _streams(upstream, 2)
    assert upstream.connections == 2  # the first was closed, not given back half-read


async def test_an_answer_without_length_or_chunks_is_read_until_the_connection_ends() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + ANSWER)
        await writer.drain()
        writer.close()  # the end of the connection is the end of the body

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    provider = make(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        resp = await provider.send(req())
    finally:
        await provider.close()
        server.close()
        await server.wait_closed()
    assert resp.status == 200 and orjson.loads(resp.body) == COMPLETION
