"""``exchange.AnswerHandler``, the protocol of a provider pool's connections: a connection's parser kept
from one ``exchange.post`` to the next, no parser run on a resume with nothing paused, and answers read
as aiohttp's own protocol reads them (large ones that pause reading, compressed ones, a ``session.post``
on the same pool in between).
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web

from gateway.policy.model import ProviderSpec, Timeouts
from gateway.providers import exchange
from gateway.providers import openai as openai_provider
from gateway.providers.base import UpstreamRequest
from gateway.providers.openai import OpenAIProvider
from tests.support.loopback import LoopbackServer

pytestmark = pytest.mark.skipif(not (openai_provider.LEAN and exchange.LEAN_HANDLER),
                                reason="this aiohttp keeps its own protocol")

LARGE = b'{"text": "' + bytes(0x41 + i % 26 for i in range(1_000_000)) + b'"}'  # > 2 x the read buffer: pauses


class Upstream(LoopbackServer):
    """``/{case}/chat/completions``: ``large``, ``gzip`` (the large one compressed), else a small answer."""

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{case}/chat/completions", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        case = request.match_info["case"]
        if case == "large":
            return web.Response(body=LARGE, content_type="application/json")
        if case == "gzip":
            return web.Response(body=gzip.compress(LARGE), headers={"Content-Encoding": "gzip",
                                                                    "Content-Type": "application/json"})
        return web.Response(body=b'{"ok": true}', content_type="application/json")


@pytest_asyncio.fixture
async def provider() -> AsyncIterator[tuple[OpenAIProvider, str]]:
    async with Upstream() as upstream:
        url = f"http://127.0.0.1:{upstream.port}"
        p = OpenAIProvider(ProviderSpec(name="up", type="openai", base_url=url, api_key="sk",
                                        timeouts=Timeouts(connect_s=2.0, first_byte_s=5.0, total_s=10.0)))
        try:
            yield p, url
        finally:
            await p.close()


async def send(p: OpenAIProvider, url: str, case: str) -> bytes:
    p._base = f"{url}/{case}"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    resp = await p.send(UpstreamRequest("chat", body, False, "req-1"))
    assert resp.status == 200 and resp.body is not None
    return resp.body


def pooled(p: OpenAIProvider) -> list[exchange.AnswerHandler]:
    assert p._session is not None
    return [proto for conns in p._session.connector._conns.values() for proto, _ in conns]  # type: ignore[union-attr]


async def test_a_connection_keeps_its_parser_across_answers(provider: tuple[OpenAIProvider, str]) -> None:
    p, url = provider
    await send(p, url, "ok")
    [proto] = pooled(p)
    assert type(proto) is exchange.AnswerHandler
    parser = proto._parser
    for case in ("ok", "large", "ok"):
        await send(p, url, case)
        assert pooled(p) == [proto] and proto._parser is parser


async def test_a_session_post_between_brings_its_own_parser_and_the_next_post_a_new_one(
        provider: tuple[OpenAIProvider, str]) -> None:
    p, url = provider
    await send(p, url, "ok")
    [proto] = pooled(p)
    first = proto._parser
    assert p._session is not None
    async with p._session.post(f"{url}/ok/chat/completions", data=b"{}") as resp:
        assert await resp.read() == b'{"ok": true}'
    assert pooled(p) == [proto] and proto._parser is not first
    await send(p, url, "ok")
    assert proto._parser is not first and proto._prepared is proto._parser


async def test_large_and_compressed_answers_that_pause_reading_arrive_whole(
        provider: tuple[OpenAIProvider, str]) -> None:
    p, url = provider
    for case in ("large", "gzip", "large", "ok"):
        body = await send(p, url, case)
        assert body == (LARGE if case != "ok" else b'{"ok": true}')
    assert len(pooled(p)) == 1


async def test_a_resume_with_nothing_paused_runs_no_parser(provider: tuple[OpenAIProvider, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    p, url = provider
    await send(p, url, "ok")
    [proto] = pooled(p)
    fed: list[bytes] = []
    monkeypatch.setattr(proto, "data_received", fed.append)
    proto.resume_reading()
    assert fed == []
    proto._reading_paused = True  # (as a body over the read buffer leaves it)
    proto.resume_reading()
    assert fed == [b""] and not proto._reading_paused  # a pause is resumed as aiohttp does
