"""OpenAI-compatible presets with their quirks, through the openai SDK and a gateway, against a loopback server.

The server behaves as the public APIs are documented and reported to: Mistral refuses fields it does
not know with a 422 ``extra_forbidden`` (``stream_options``, ``max_completion_tokens``) and sends usage
on its last chunk unasked; Groq sends a stream's usage in ``x_groq.usage`` on its last chunk.
"""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web

from gateway.policy.loader import load_policy
from tests.support.harness import ServerThread
from tests.support.loopback import LoopbackServer
from tests.support.prom import scrape

USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
WORDS = ("Bonjour", " le", " monde")


class CompatibleServer(LoopbackServer):
    """``style`` is ``mistral`` or ``groq``: strict fields and where a stream's usage rides."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style
        self.bodies: list[dict] = []

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        extra = [k for k in ("stream_options", "max_completion_tokens") if k in body]
        if self.style == "mistral" and extra:
            detail = [{"type": "extra_forbidden", "loc": ["body", k], "msg": "Extra inputs are not permitted"}
                      for k in extra]
            return web.json_response({"object": "error", "message": {"detail": detail},
                                      "type": "invalid_request_error", "param": None, "code": None}, status=422)
        base = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "usage": USAGE, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)}, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i, word in enumerate(WORDS):
            chunk = {**base, "choices": [{"index": 0, "delta": {"content": word},
                                          "finish_reason": "stop" if i == len(WORDS) - 1 else None}]}
            if i == len(WORDS) - 1:
                if self.style == "mistral":
                    chunk["usage"] = USAGE
                else:
                    chunk["x_groq"] = {"id": "req_01", "usage": {**USAGE, "queue_time": 0.01}}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp


def policy(kind: str, url: str, options: str = "") -> str:
    return f"""
version: 1
providers:
  up: {{type: {kind}, base_url: "{url}", api_key: sk-compatible-key{options}}}
models:
  m:
    price: {{input: 1.0, output: 2.0}}
    deployments: [{{provider: up, model: served-model}}]
tenants:
  t: {{api_keys: [sk-tenant], models: [m]}}
"""


@pytest.fixture(params=["mistral", "groq"])
def preset(request: pytest.FixtureRequest, servers: ServerThread):
    server = servers.call(CompatibleServer(request.param).start())
    yield request.param, server
    servers.call(server.stop())


def tokens(gw) -> tuple[float, float]:
    s = scrape(gw.url)
    return s.value("llm_gateway_tokens_total", type="prompt"), s.value("llm_gateway_tokens_total", type="completion")


def test_a_stream_is_answered_and_its_usage_charged_once(preset, make_gateway) -> None:
    kind, server = preset
    gw = make_gateway(policy(kind, server.url))
    client = gw.client("sk-tenant")
    msgs = [{"role": "user", "content": "salut"}]
    quiet = list(client.chat.completions.create(model="m", messages=msgs, stream=True, max_completion_tokens=50))
    asked = list(client.chat.completions.create(model="m", messages=msgs, stream=True,
                                                stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in quiet if c.choices) == "".join(WORDS)
    assert all(c.usage is None for c in quiet)  # the client did not ask for usage: it sees none
    with_usage = [c.usage for c in asked if c.usage is not None]
    assert [(u.prompt_tokens, u.completion_tokens) for u in with_usage] == [(11, 3)]  # where OpenAI puts it
    assert tokens(gw) == (22.0, 6.0)  # both streams charged from the server's own usage, once each
    if kind == "mistral":
        assert all("stream_options" not in b and "max_completion_tokens" not in b for b in server.bodies)
        assert server.bodies[0]["max_tokens"] == 50
    else:
        assert server.bodies[0]["stream_options"] == {"include_usage": True}


def test_a_plain_answer_passes_through(preset, make_gateway) -> None:
    kind, server = preset
    gw = make_gateway(policy(kind, server.url))
    out = gw.client("sk-tenant").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert out.choices[0].message.content == "".join(WORDS)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (11, 3)
    assert tokens(gw) == (11.0, 3.0)


def test_the_openai_type_takes_the_quirks_as_options(servers: ServerThread, make_gateway, tmp_path) -> None:
    server = servers.call(CompatibleServer("mistral").start())
    try:
        plain = make_gateway(policy("openai", server.url))
        with pytest.raises(Exception) as info:  # a strict server behind the plain type: its 422 comes back
            list(plain.client("sk-tenant").chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True))
        assert getattr(info.value, "status_code", None) == 422
        tuned = make_gateway(policy("openai", server.url, ", stream_options: false, "
                                    "max_completion_tokens: false"), name="tuned.yaml")
        chunks = list(tuned.client("sk-tenant").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(WORDS)
        assert tokens(tuned) == (11.0, 3.0)
    finally:
        servers.call(server.stop())


def test_a_policy_can_turn_a_presets_quirk_back(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy("mistral", "http://127.0.0.1:9/v1", ", stream_options: true"))
    options = load_policy(path).providers["up"].options
    assert (options.stream_options, options.max_completion_tokens) == (True, False)
