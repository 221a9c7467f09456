"""End to end: the official openai SDK -> the gateway -> a real mock upstream on loopback."""

from __future__ import annotations

import asyncio
import base64
import struct

import httpx
import openai
import orjson
import pytest

from tests.support.mock_openai import Fault
from tests.support.policies import basic_policy

MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def gw(make_gateway, upstream):
    return make_gateway(basic_policy(upstream.url))


def test_chat_plain_sync(gw, upstream):
    client = gw.client("sk-acme")
    raw = client.chat.completions.with_raw_response.create(model="small", messages=MSG)
    out = raw.parse()
    assert out.choices[0].message.content == "Echo: hello there"
    assert out.usage.prompt_tokens == 2 and out.usage.completion_tokens == 3
    assert raw.headers["x-request-id"]
    assert raw.headers["x-gateway-provider"] == "upstream"
    sent = upstream.requests[-1]
    assert sent["model"] == "small-a"
    # the tenant key never reaches the provider; the provider key is used instead
    assert upstream.headers[-1]["Authorization"] == "Bearer sk-upstream-secret"


def test_request_id_is_echoed(gw):
    r = httpx.post(gw.base_url + "/chat/completions", headers={"Authorization": "Bearer sk-acme",
                   "x-request-id": "abc-123"}, json={"model": "small", "messages": MSG})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"


def test_chat_stream_sync(gw, upstream):
    client = gw.client("sk-acme")
    chunks = list(client.chat.completions.create(model="small", messages=MSG, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello there"
    # the gateway asked upstream for usage but the client did not: no usage chunk reaches it
    assert upstream.requests[-1]["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in chunks)


def test_chat_stream_with_client_usage(gw):
    client = gw.client("sk-acme")
    chunks = list(client.chat.completions.create(model="small", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage.total_tokens == 5 and chunks[-1].choices == []


async def test_async_client_everything(gw):
    client = gw.aclient("sk-acme")
    out = await client.chat.completions.create(model="small", messages=MSG)
    assert out.choices[0].message.content == "Echo: hello there"
    stream = await client.chat.completions.create(model="small", messages=MSG, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Echo: hello there"
    comp = await client.completions.create(model="small", prompt="say hi")
    assert comp.choices[0].text == "Echo: say hi"
    emb = await client.embeddings.create(model="emb", input=["a", "b"])
    assert len(emb.data) == 2 and emb.data[1].embedding[0] == pytest.approx(0.2)
    models = await client.models.list()
    assert sorted(m.id for m in models.data) == ["emb", "large", "small"]
    await client.close()


def test_completions_stream_and_embeddings_sync(gw):
    client = gw.client("sk-acme")
    text = "".join(c.choices[0].text for c in client.completions.create(model="small", prompt="p q", stream=True)
                   if c.choices)
    assert text == "Echo: p q"
    emb = client.embeddings.create(model="emb", input="x", encoding_format="float")
    assert emb.data[0].embedding == pytest.approx([0.1, 0.2, 0.3])


def test_models_list_only_allowed(gw):
    assert [m.id for m in gw.client("sk-beta").models.list().data] == ["small"]


def test_bad_key_is_401_openai_shape(gw):
    with pytest.raises(openai.AuthenticationError) as exc:
        gw.client("sk-nope").chat.completions.create(model="small", messages=MSG)
    assert exc.value.status_code == 401
    assert exc.value.body["code"] == "invalid_api_key"
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "small", "messages": MSG})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_and_forbidden_model_look_the_same(gw):
    client = gw.client("sk-beta")
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="nope", messages=MSG)
    with pytest.raises(openai.NotFoundError) as forbidden:
        client.chat.completions.create(model="large", messages=MSG)
    assert unknown.value.body["code"] == forbidden.value.body["code"] == "model_not_found"
    assert "large" not in unknown.value.message and "small" not in forbidden.value.message


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "small"}, "messages", "'messages' is required"),
        ({"model": "small", "messages": []}, "messages", "at least one message"),
        ({"model": "small", "messages": "hi"}, "messages", "must be an array"),
        ({"model": "small", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "must be one of"),
        ({"model": "small", "messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string"),
        ({"model": "small", "messages": MSG, "max_tokens": "10"}, "max_tokens", "must be an integer"),
        ({"model": "small", "messages": MSG, "max_tokens": 0}, "max_tokens", "at least 1"),
        ({"model": "small", "messages": MSG, "temperature": 7}, "temperature", "between 0 and 2"),
        ({"model": "small", "messages": MSG, "stream": "yes"}, "stream", "must be a boolean"),
        ({"model": "small", "messages": MSG, "max_tokens": 5000}, "max_tokens", "context window"),
        ({"model": "small", "messages": [{"role": "user", "content": "x" * 20000}]}, "messages",
         "exceeds the 4000-token context window"),
        ({"messages": MSG}, "model", "'model' is required"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(gw, upstream, body, param, fragment):
    r = httpx.post(gw.base_url + "/chat/completions", headers={"Authorization": "Bearer sk-acme"}, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and fragment in err["message"]
    assert upstream.calls == 0


def test_invalid_json_content_type_and_size(gw):
    auth = {"Authorization": "Bearer sk-acme"}
    r = httpx.post(gw.base_url + "/chat/completions", headers={**auth, "content-type": "application/json"},
                   content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(gw.base_url + "/chat/completions", headers={**auth, "content-type": "text/plain"}, content=b"{}")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type"
    big = orjson.dumps({"model": "small", "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]})
    r = httpx.post(gw.base_url + "/chat/completions", headers={**auth, "content-type": "application/json"},
                   content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_upstream_500_then_exhausted(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url))
    upstream.default = Fault(status=500)
    with pytest.raises(openai.InternalServerError) as exc:
        gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    assert exc.value.status_code == 503  # every deployment failed: on_exhausted error (issue 5)
    assert set(exc.value.body) == {"message", "type", "param", "code"}


def test_upstream_429_passes_retry_after(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url))
    upstream.default = Fault(status=429, headers={"retry-after": "7"})
    with pytest.raises(openai.RateLimitError) as exc:
        gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    assert exc.value.response.headers["retry-after"] == "7"


def test_upstream_400_is_faithful_and_not_retried(make_gateway, upstream, backup):
    gw = make_gateway(basic_policy(upstream.url, backup.url))
    body = orjson.dumps({"error": {"message": "bad thing", "type": "invalid_request_error", "param": "x",
                                   "code": "bad"}})
    upstream.default = Fault(status=400, body=body)
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    assert exc.value.body["message"] == "The upstream provider 'upstream' answered 400: bad thing"
    assert (exc.value.body["code"], exc.value.body["param"]) == ("bad", "x")
    assert backup.calls == 0


def test_upstream_error_echoing_the_request_never_reaches_the_client(make_gateway, upstream, backup):
    """Issue 14: a provider that echoes its key or our request gets retold, scrubbed and named."""
    gw = make_gateway(basic_policy(upstream.url, backup.url))
    echo = {"error": {"message": "Invalid key Bearer sk-upstream-abcdef0123456789 for request "
                                 '{"model": "small-a", "messages": [...]}', "type": "authentication_error",
                      "code": "invalid_api_key"},
            "request": {"headers": {"authorization": "Bearer sk-upstream-abcdef0123456789"}}}
    upstream.default = Fault(status=401, body=orjson.dumps(echo))
    with pytest.raises(openai.AuthenticationError) as exc:
        gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    raw = exc.value.response.text
    assert "sk-upstream" not in raw and "abcdef0123456789" not in raw and "request" not in exc.value.body
    assert "The upstream provider 'upstream' answered 401: Invalid key [REDACTED]" in exc.value.body["message"]
    assert exc.value.body["code"] == "invalid_api_key"


def test_failover_to_backup_on_500(make_gateway, upstream, backup):
    gw = make_gateway(basic_policy(upstream.url, backup.url))
    upstream.default = Fault(status=503)
    out = gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    assert out.choices[0].message.content == "Echo: hello there"
    assert backup.requests[-1]["model"] == "small-b"


def test_mid_stream_cut_raises_in_sdk(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url))
    upstream.default = Fault(cut_after=1)
    client = gw.client("sk-acme")
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="small", messages=[{"role": "user", "content": "a b c d e"}],
                                            stream=True))


def test_stream_without_done_is_an_error_not_a_clean_end(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url))
    upstream.default = Fault(no_done=True)
    r = httpx.post(gw.base_url + "/chat/completions", headers={"Authorization": "Bearer sk-acme"},
                   json={"model": "small", "messages": MSG, "stream": True})
    events = [line for line in r.text.split("\n\n") if line]
    assert "data: [DONE]" not in r.text
    assert orjson.loads(events[-1].removeprefix("data: "))["error"]["code"] == "stream_cut"


async def test_client_disconnect_cancels_upstream(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url))
    upstream.default = Fault(chunk_delay_s=0.2)
    words = " ".join(f"w{i}" for i in range(50))
    async with httpx.AsyncClient() as client:  # noqa: SIM117
        async with client.stream("POST", gw.base_url + "/chat/completions",
                                 headers={"Authorization": "Bearer sk-acme"},
                                 json={"model": "small", "messages": [{"role": "user", "content": words}],
                                       "stream": True}) as r:
            async for _ in r.aiter_bytes():
                break
    for _ in range(50):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.05)
    assert upstream.cancelled == 1 and upstream.completed_streams == 0


def test_unknown_headers_accepted(gw):
    client = gw.client("sk-acme", default_headers={"OpenAI-Organization": "org-x", "X-Stainless-Foo": "1"})
    assert client.chat.completions.create(model="small", messages=MSG).choices


def test_health_and_ready(gw):
    assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gw.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["policy"]["last_reload_error"] is None


def test_mock_provider_embeddings_base64(make_gateway):
    policy = """
version: 1
providers:
  m: {type: mock}
models:
  e:
    price: {input: 0, output: 0}
    deployments: [{provider: m, model: e}]
tenants:
  t: {api_keys: [k1], models: "*"}
"""
    gw = make_gateway(policy)
    emb = gw.client("k1").embeddings.create(model="e", input="hello")
    raw = base64.b64encode(struct.pack("<16f", *emb.data[0].embedding))
    assert len(emb.data[0].embedding) == 16 and raw
