"""Vertex AI: bearer tokens minted from a test service account by a local token endpoint, refreshed in the
background (never on the request path), and Gemini requests on the Vertex URLs, alone and through the gateway."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from gateway.errors import UpstreamError
from gateway.policy.model import ProviderSpec, Timeouts
from gateway.providers.base import UpstreamRequest
from gateway.providers.google_auth import INSTALL_HINT, TokenSource, refresh_delay
from gateway.providers.vertex import VertexOptions, VertexProvider, default_base_url
from tests.support.mock_gemini import MockGemini

pytest.importorskip("google.auth", reason="the vertex provider needs the [google] extra")
pytest.importorskip("cryptography")

PATH = "/v1/projects/test-project/locations/us-central1/publishers/google/models/gemini-2.5-flash"


def test_refresh_timing_and_default_urls() -> None:
    assert refresh_delay(1000.0 + 3600, 1000.0) == 3300.0  # an hour-long token: 5 minutes early
    assert refresh_delay(1000.0 + 4, 1000.0) == 2.0  # a short one: at half its life
    assert refresh_delay(1000.0, 1000.0) == 0.5
    assert default_base_url("europe-west4") == "https://europe-west4-aiplatform.googleapis.com"
    assert default_base_url("global") == "https://aiplatform.googleapis.com"


async def test_a_missing_google_auth_is_a_clear_error() -> None:
    def loader(path: str) -> tuple[Any, str | None]:
        raise RuntimeError(INSTALL_HINT)

    tokens = TokenSource("sa.json", name="vx", loader=loader)
    with pytest.raises(UpstreamError) as exc:
        await asyncio.wait_for(tokens.token(), 5)
    assert "pip install 'llm-gateway[google]'" in exc.value.message and exc.value.kind == "connect"
    await tokens.close()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[MockGemini]:
    mock = await MockGemini(token_ttl_s=6).start()
    yield mock
    await mock.stop()


def vertex_spec(server: MockGemini, sa_file: Path, project: str = "") -> ProviderSpec:
    return ProviderSpec(name="vx", type="vertex", base_url=server.url,
                        options=VertexOptions(project=project, location="us-central1", credentials_file=str(sa_file)),
                        timeouts=Timeouts(connect_s=2.0, first_byte_s=5.0, total_s=10.0))


def chat(stream: bool = False) -> UpstreamRequest:
    return UpstreamRequest(endpoint="chat", stream=stream, request_id="r", body={
        "model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hello vertex"}]})


async def test_tokens_are_refreshed_in_the_background_never_on_the_request_path(server: MockGemini,
                                                                                 tmp_path: Path) -> None:
    provider = VertexProvider(vertex_spec(server, server.service_account_file(tmp_path)))
    try:
        await provider.start()  # fetches the first token
        resp = await provider.send(chat())
        assert resp.status == 200, resp.body
        assert orjson.loads(resp.body)["choices"][0]["message"]["content"] == "Mock answer to: hello vertex"
        assert server.paths[-1] == PATH + ":generateContent"  # the project came from the service account
        first = server.headers[-1]["authorization"]
        assert first.startswith("Bearer ya29.mock-") and "x-goog-api-key" not in server.headers[-1]
        # a 6 s token is refreshed after ~3 s; meanwhile a slow token endpoint never slows a request
        server.token_delay_s = 2.0
        deadline = time.monotonic() + 12
        while provider.tokens.refreshes < 2 and time.monotonic() < deadline:
            started = time.monotonic()
            resp = await provider.send(chat(stream=True))
            assert resp.status == 200 and resp.events is not None
            assert [c async for c in resp.events]
            assert time.monotonic() - started < 1.5  # the refresh in flight did not hold the request
            await asyncio.sleep(0.2)
        assert provider.tokens.refreshes >= 2 and server.token_requests >= 2
        assert (await provider.send(chat())).status == 200
        assert server.headers[-1]["authorization"] != first  # the refreshed token is in use
    finally:
        await provider.close()


async def test_a_token_endpoint_down_at_start_is_an_upstream_error_then_recovers(server: MockGemini,
                                                                                 tmp_path: Path) -> None:
    server.token_fail = True
    provider = VertexProvider(vertex_spec(server, server.service_account_file(tmp_path), project="test-project"))
    try:
        with pytest.raises(UpstreamError) as exc:
            await provider.send(chat())
        assert exc.value.kind == "connect" and "no valid access token" in exc.value.message
        server.token_fail = False
        deadline = time.monotonic() + 5
        while provider.tokens.refreshes == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the background task retries with backoff
        assert (await provider.send(chat())).status == 200
    finally:
        await provider.close()


@pytest.fixture
def vertex(servers):
    server = servers.call(MockGemini(token_ttl_s=3).start())
    yield server
    servers.call(server.stop())


def test_through_the_gateway_with_the_openai_sdk(make_gateway, vertex, tmp_path):
    sa_file = vertex.service_account_file(tmp_path)
    gw = make_gateway(textwrap.dedent(f"""\
        version: 1
        providers:
          vx:
            type: vertex
            base_url: "{vertex.url}"
            project: test-project
            location: us-central1
            credentials_file: "{sa_file}"
        models:
          flash:
            price: gemini-2.5-flash
            deployments: [{{provider: vx, model: gemini-2.5-flash}}]
          emb:
            price: {{input: 0.15, output: 0.0}}
            deployments: [{{provider: vx, model: text-embedding-005}}]
        tenants:
          acme: {{api_keys: [sk-acme], models: "*"}}
        """))
    client = gw.client("sk-acme")
    out = client.chat.completions.create(model="flash", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "Mock answer to: hi"
    chunks = list(client.chat.completions.create(model="flash", messages=[{"role": "user", "content": "stream"}],
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Mock answer to: stream"
    assert vertex.paths[-1] == PATH + ":streamGenerateContent?alt=sse"
    emb = client.embeddings.create(model="emb", input=["a b c"], dimensions=4)
    assert len(emb.data[0].embedding) == 4 and emb.usage.prompt_tokens == 3  # Vertex counts the tokens
    assert vertex.paths[-1].endswith("/models/text-embedding-005:predict")
    assert all(h["authorization"].startswith("Bearer ya29.mock-") for h in vertex.headers)
