"""The Azure OpenAI adapter against a loopback server that checks Azure's URL and auth conventions."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.policy.model import ProviderSpec, Timeouts
from gateway.providers.azure_openai import DEFAULT_API_VERSION, AzureOpenAIProvider, AzureOptions
from gateway.providers.base import Endpoint, UpstreamRequest

KEY = "azure-SECRET-key"
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class MockAzure:
    """Answers only well-formed Azure calls; anything else gets the 4xx Azure would send."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.status = 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.seen.append(
            {
                "path": request.path,
                "raw_path": request.raw_path,
                "query": dict(request.query),
                "headers": request.headers,
                "body": body,
            }
        )
        if request.headers.get("api-key") != KEY:
            return _error(401, "401", "Access denied due to invalid subscription key.")
        if "api-version" not in request.query:
            return _error(404, "404", "Resource not found")
        if self.status != 200:
            return _error(self.status, "429", "Rate limit is exceeded.", {"retry-after": "12"})
        if request.match_info["op"] == "embeddings":
            return web.json_response(
                {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}]}
            )
        if not body.get("stream"):
            return web.json_response(COMPLETION)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for piece in ("Hel", "lo"):
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": piece}}],
            }
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@pytest_asyncio.fixture
async def azure() -> AsyncIterator[MockAzure]:
    mock = MockAzure()
    app = web.Application()
    app.router.add_post("/openai/deployments/{deployment}/{op:.+}", mock.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    mock.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield mock
    await runner.cleanup()


def make(url: str, api_version: str = "", key: str = KEY) -> AzureOpenAIProvider:
    timeouts = Timeouts(connect_s=2.0, first_byte_s=5.0, total_s=10.0)
    spec = ProviderSpec(
        name="azure-eu",
        type="azure_openai",
        base_url=url,
        api_key=key,
        timeouts=timeouts,
        options=AzureOptions(api_version=api_version),
    )
    return AzureOpenAIProvider(spec)


def req(endpoint: Endpoint = "chat", stream: bool = False, **body: Any) -> UpstreamRequest:
    body.setdefault("model", "gpt4o-prod")
    if endpoint == "chat":
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return UpstreamRequest(
        endpoint=endpoint, body={**body, "stream": stream}, stream=stream, request_id="r-1"
    )


async def test_chat_url_auth_and_body(azure: MockAzure) -> None:
    provider = make(azure.url)
    try:
        resp = await provider.send(req(temperature=0))
    finally:
        await provider.close()
    assert resp.status == 200 and orjson.loads(resp.body or b"") == COMPLETION
    [seen] = azure.seen
    assert seen["path"] == "/openai/deployments/gpt4o-prod/chat/completions"
    assert seen["query"] == {"api-version": DEFAULT_API_VERSION}
    assert seen["headers"]["api-key"] == KEY
    assert "authorization" not in {k.lower() for k in seen["headers"]}
    assert seen["body"] == {
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "temperature": 0,
    }


@pytest.mark.parametrize("suffix", ["", "/", "/openai", "/openai/"])
async def test_embeddings_with_configured_version_and_base_forms(azure: MockAzure, suffix: str) -> None:
    provider = make(azure.url + suffix, api_version="2024-06-01")
    try:
        resp = await provider.send(req("embeddings", model="text-embedding-3-small", input="x"))
    finally:
        await provider.close()
    assert resp.status == 200
    assert azure.seen[0]["path"] == "/openai/deployments/text-embedding-3-small/embeddings"
    assert azure.seen[0]["query"] == {"api-version": "2024-06-01"}


async def test_stream_passes_through(azure: MockAzure) -> None:
    provider = make(azure.url)
    try:
        resp = await provider.send(req(stream=True))
        assert resp.events is not None
        pieces = [orjson.loads(c)["choices"][0]["delta"]["content"] async for c in resp.events]
    finally:
        await provider.close()
    assert pieces == ["Hel", "lo"]


async def test_errors_keep_status_and_retry_after(azure: MockAzure) -> None:
    azure.status = 429
    provider = make(azure.url)
    try:
        resp = await provider.send(req())
    finally:
        await provider.close()
    assert resp.status == 429
    assert resp.headers["retry-after"] == "12"
    assert orjson.loads(resp.body or b"")["error"]["message"] == "Rate limit is exceeded."


async def test_wrong_key_is_not_echoed(azure: MockAzure) -> None:
    provider = make(azure.url, key="azure-WRONG-secret")
    try:
        resp = await provider.send(req())
    finally:
        await provider.close()
    assert resp.status == 401 and b"azure-WRONG-secret" not in (resp.body or b"")


async def test_deployment_name_is_escaped_and_required(azure: MockAzure) -> None:
    provider = make(azure.url)
    try:
        await provider.send(req(model="my model/v2"))
        missing = await provider.send(req(model=""))
    finally:
        await provider.close()
    # one path segment: the slash inside the name is escaped, not a new path level
    assert azure.seen[0]["raw_path"].startswith("/openai/deployments/my%20model%2Fv2/chat/completions?")
    assert missing.status == 400 and orjson.loads(missing.body or b"")["error"]["param"] == "model"
    assert len(azure.seen) == 1
