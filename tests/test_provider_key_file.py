"""``api_key_file``: a mounted secret rotated under live traffic, with no restart and no failed request."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from aiohttp import web

from gateway.policy.loader import load_policy
from gateway.providers.keys import KeySource
from gateway.providers.registry import create_provider
from tests.support.harness import ServerThread
from tests.support.mock_openai import Fault, MockOpenAI

OLD, NEW = "sk-old-SECRET-0001", "sk-new-SECRET-0002"


class KeyedMock(MockOpenAI):
    """An OpenAI mock that accepts only the keys in ``accepted`` and echoes a refused key in its 401."""

    def __init__(self, name: str = "keyed") -> None:
        super().__init__(name)
        self.accepted: set[str] = {OLD}
        self.refused: list[str] = []

    async def _prelude(self, request: web.Request) -> tuple[dict, Fault]:
        body, fault = await super()._prelude(request)
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if key not in self.accepted:
            self.refused.append(key)
            message = f"Incorrect API key provided: {key}".encode()
            return body, Fault(status=401, body=b'{"error": {"message": "' + message + b'", "type": "x"}}')
        return body, fault


def test_key_source_follows_the_file_and_keeps_the_last_good_key(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(OLD + "\n")
    keys = KeySource(path=str(path), name="p")
    assert keys.current() == OLD

    async def scenario() -> None:
        path.write_text(NEW)
        assert await keys.refresh() and keys.current() == NEW
        assert keys.secrets() == (NEW, OLD)
        path.unlink()  # a symlink swap in progress: keep the key
        assert not await keys.refresh() and keys.current() == NEW
        path.write_text("")
        assert not await keys.refresh() and keys.current() == NEW
        await keys.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind, header, value", [
    ("openai", "authorization", "Bearer {}"), ("groq", "authorization", "Bearer {}"),
    ("azure_openai", "api-key", "{}"), ("anthropic", "x-api-key", "{}"), ("gemini", "x-goog-api-key", "{}"),
])
def test_every_http_provider_sends_the_current_file_key(tmp_path: Path, kind: str, header: str, value: str) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "k").write_text(OLD)
    policy = tmp_path / "p.yaml"
    policy.write_text(f"version: 1\nproviders:\n  up:\n    type: {kind}\n    base_url: http://127.0.0.1:9/v1\n"
                      "    api_key_file: secrets/k\n")
    spec = load_policy(str(policy), env={}).providers["up"]
    assert spec.api_key_file == str(tmp_path / "secrets" / "k")  # anchored at the policy's folder
    assert "SECRET" not in repr(spec)
    provider = create_provider(spec)
    assert provider.key_headers() == {header: value.format(OLD)}  # type: ignore[attr-defined]

    async def rotate() -> None:
        (tmp_path / "secrets" / "k").write_text(NEW)
        await provider.key.refresh()  # type: ignore[attr-defined]
        await provider.close()

    asyncio.run(rotate())
    assert provider.key_headers() == {header: value.format(NEW)}  # type: ignore[attr-defined]


def test_rotation_under_traffic_drops_no_request(servers: ServerThread, make_gateway, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    mock: KeyedMock = servers.call(KeyedMock().start())
    key_file = tmp_path / "openai.key"
    key_file.write_text(OLD + "\n")
    gw = make_gateway(f"""
version: 1
providers:
  up: {{type: openai, base_url: "{mock.url}", api_key_file: openai.key}}
models:
  m: {{deployments: [{{provider: up, model: gpt-4o-mini}}]}}
tenants:
  t: {{api_keys: [sk-tenant], models: [m]}}
""")
    client = openai.OpenAI(base_url=gw.base_url, api_key="sk-tenant", max_retries=0, timeout=10)
    failures: list[str] = []
    done = threading.Event()
    sent = [0]

    def traffic() -> None:
        while not done.is_set():
            try:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                sent[0] += 1
            except openai.APIError as exc:
                failures.append(str(exc))
            time.sleep(0.01)

    workers = [threading.Thread(target=traffic) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.3)
        mock.accepted = {OLD, NEW}  # the provider issues the new key; both valid during the overlap
        key_file.write_text(NEW + "\n")  # the secret mount is updated
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not mock.headers[-1]["Authorization"].endswith(NEW):
            time.sleep(0.05)
        time.sleep(0.2)
        mock.accepted = {NEW}  # the old key is revoked
        before = sent[0]
        time.sleep(0.5)
    finally:
        done.set()
        for w in workers:
            w.join(10)
    assert failures == []
    assert sent[0] > before
    assert {h["Authorization"] for h in mock.headers} == {f"Bearer {OLD}", f"Bearer {NEW}"}
    assert mock.refused == []
    old = httpx.post(mock.url + "/chat/completions", headers={"authorization": f"Bearer {OLD}"},
                     json={"model": "x", "messages": []})
    assert old.status_code == 401  # the old key is dead; the gateway no longer needs it

    # an upstream error echoing a key (current or previous) is redacted before the client sees it
    mock.accepted = set()
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert "SECRET" not in str(info.value) and "[redacted]" in str(info.value).lower()
    for path in ("/metrics", "/readyz", "/healthz"):
        assert "SECRET" not in httpx.get(gw.url + path).text
    assert "SECRET" not in caplog.text
    servers.call(mock.stop())
