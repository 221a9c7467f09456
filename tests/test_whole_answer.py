"""WholeAnswer writes what web.Response writes: the same head (Date aside) and body, keep-alive rules included."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway.http.answer import WholeAnswer, http_date
from tests.support.loopback import LoopbackServer

HEADERS = {"x-request-id": "r-1", "x-ratelimit-limit-requests": "60", "retry-after": "1"}


class Both(LoopbackServer):
    """``/whole`` answers with WholeAnswer, ``/plain`` with web.Response, from the same facts (query)."""

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/whole", self.whole)
        app.router.add_route("*", "/plain", self.plain)
        return app

    @staticmethod
    def facts(request: web.Request) -> tuple[int, bytes, bool]:
        size = int(request.query.get("size", "20"))
        return int(request.query.get("status", "200")), b"x" * size, request.query.get("close") == "1"

    async def whole(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        status, body, close = self.facts(request)
        out = WholeAnswer(status, body, HEADERS, "application/json")
        if close:
            out.force_close()
        return out

    async def plain(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        status, body, close = self.facts(request)
        out = web.Response(status=status, body=body, headers=HEADERS, content_type="application/json")
        if close:
            out.force_close()
        return out


async def exchange(port: int, raw: bytes) -> tuple[bytes, bool]:
    """Send ``raw``; read one answer (by its Content-Length, or to the end); say whether the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = await asyncio.wait_for(reader.readexactly(length), 5)
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.3) == b""
        except TimeoutError:
            closed = False  # still open after the answer: kept alive
        return head + body, closed
    finally:
        writer.close()


def normal(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(": ")
        fields[name.lower()] = "<date>" if name.lower() == "date" else value
    return status, fields, body


@pytest.mark.parametrize("version,extra,query", [
    ("1.1", "", ""),
    ("1.1", "", "status=429&size=80"),
    ("1.1", "", "close=1"),
    ("1.1", "Connection: close\r\n", ""),
    ("1.0", "", ""),
    ("1.0", "Connection: keep-alive\r\n", ""),
    ("1.1", "", "size=70000"),  # past the one-buffer size: head and body go out in two writes
    ("1.1", "", "status=204&size=0"),
])
async def test_same_bytes_as_web_response(version: str, extra: str, query: str) -> None:
    async with Both() as srv:
        answers = []
        for path in ("whole", "plain"):
            raw = (f"POST /{path}?{query} HTTP/{version}\r\nHost: x\r\n{extra}Content-Length: 2\r\n\r\n{{}}").encode()
            answers.append(await exchange(srv.port, raw))
    (whole, whole_closed), (plain, plain_closed) = answers
    assert normal(whole) == normal(plain)
    assert whole_closed == plain_closed


async def test_kept_alive_connection_serves_the_next_request() -> None:
    async with Both() as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            for _ in range(3):
                writer.write(b"POST /whole?size=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                assert await asyncio.wait_for(reader.readexactly(5), 5) == b"xxxxx"
        finally:
            writer.close()


async def test_a_newline_in_a_header_value_is_refused() -> None:
    class Bad(LoopbackServer):
        def build_app(self) -> web.Application:
            app = web.Application()

            async def bad(request: web.Request) -> web.StreamResponse:
                return WholeAnswer(200, b"{}", {"x-injected": "a\r\nset-cookie: b"}, "application/json")

            app.router.add_post("/", bad)
            return app

    async with Bad() as srv:  # as aiohttp does with web.Response: nothing is sent, the connection ends
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        sent = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert sent == b""


def test_http_date_is_an_imf_fixdate() -> None:
    value = http_date()
    assert value.endswith(" GMT") and len(value) == 29 and value[3:5] == ", "
