"""Odd but well-formed requests, and malformed HTTP, against the every-stage gateway of the fuzz test.

Each test pins one defect the fuzzer found (or one case the robustness issue names) to its answer:
a 4xx in the OpenAI error shape naming the field, or a normal answer, never a 5xx or a hang.
"""

from __future__ import annotations

import gzip
import logging
import socket

import httpx
import openai
import orjson
import pytest

from gateway.stages.input_check import MAX_DEPTH, nesting_exceeds
from tests.test_robustness import (
    PLAIN_KEY,
    PROVIDER_KEYS,
    REDACTED_KEY,
    TIGHT_KEY,
    claude,  # noqa: F401 - fixture
    error_shape,
    full_policy,
)

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
def gw(make_gateway, upstream, backup, claude, tmp_path):  # noqa: F811
    return make_gateway(full_policy(upstream.url, backup.url, claude.url, "backend: memory", tmp_path))


def post(gw, path: str, body: object, key: str = REDACTED_KEY, **headers: str) -> httpx.Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json", **headers}
    return httpx.post(gw.url + path, content=raw, headers=headers, timeout=30)


def error_of(resp: httpx.Response) -> dict:
    assert resp.status_code < 500, resp.text[:300]
    data = resp.json()
    assert error_shape(data) is None, data
    assert resp.headers.get("x-request-id")
    return data["error"]


def raw_http(gw, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client library would write; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
        while len(body) < int(headers.get("content-length", 0)) and (chunk := sock.recv(65536)):
            body += chunk
    return int(lines[0].split()[1]), headers, body


# -- the cases the issue names ------------------------------------------------------------------------
def test_ten_thousand_messages(gw, upstream):
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(10_000)]
    err = error_of(post(gw, "/v1/chat/completions", {"model": "small", "messages": messages}))
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    ok = post(gw, "/v1/chat/completions", {"model": "wide", "messages": messages})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Echo: m9998"
    assert len(upstream.requests[-1]["messages"]) == 10_000


def test_three_megabyte_string_is_redacted_off_the_loop_and_answered(gw, upstream):
    text = "word " * 600_000 + PROVIDER_KEYS[0]  # ~3 MB; the tenant redacts what goes upstream
    err = error_of(post(gw, "/v1/chat/completions", {"model": "small", "messages": [
        {"role": "user", "content": text}]}))
    assert err["code"] == "context_length_exceeded"
    ok = post(gw, "/v1/chat/completions", {"model": "wide", "messages": [{"role": "user", "content": text}]})
    assert ok.status_code == 200
    sent = upstream.requests[-1]["messages"][0]["content"]
    assert len(sent) > 3_000_000 and PROVIDER_KEYS[0] not in sent and sent.endswith("[SECRET]")
    assert PROVIDER_KEYS[0] not in ok.text
    too_big = error_of(post(gw, "/v1/chat/completions", {"model": "wide", "messages": [
        {"role": "user", "content": "x" * 5_000_000}]}))
    assert too_big["code"] == "request_too_large"


def test_n_with_stream_streams_every_choice_and_admits_n_completions(gw):
    client = gw.client(PLAIN_KEY)
    chunks = list(client.chat.completions.create(model="small", messages=USER, n=5, stream=True, max_tokens=50))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hello"
    tight = gw.client(TIGHT_KEY)
    assert tight.chat.completions.create(model="small", messages=USER, n=1, max_tokens=450).choices
    with pytest.raises(openai.RateLimitError):  # 5 x 450 completion tokens can't fit a 2000 tpm minute
        tight.chat.completions.create(model="small", messages=USER, n=5, max_tokens=450)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="small", messages=USER, n=1000)
    assert exc.value.body["param"] == "n"


def test_stream_true_for_embeddings_is_refused(gw, upstream):
    calls = upstream.calls
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client(REDACTED_KEY).embeddings.create(model="emb", input="hi", extra_body={"stream": True})
    assert exc.value.body["param"] == "stream" and upstream.calls == calls
    assert gw.client(REDACTED_KEY).embeddings.create(model="emb", input="hi", extra_body={"stream": False}).data


@pytest.mark.parametrize(("tools", "param"), [
    ([1], "tools[0]"),
    ([{"function": {"name": "f"}}], "tools[0]"),
    ([{"type": "function"}], "tools[0].function"),
    ([{"type": "function", "function": {"name": ""}}], "tools[0].function"),
])
def test_malformed_tools_name_the_item(gw, upstream, tools, param):
    err = error_of(post(gw, "/v1/chat/completions", {"model": "small", "messages": USER, "tools": tools}))
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_tools_of_other_types_pass_to_openai_upstreams_and_are_refused_by_anthropic(gw, upstream):
    tools = [{"type": "code_interpreter"}, {"type": "custom", "custom": {"name": "grammar"}}]
    ok = post(gw, "/v1/chat/completions", {"model": "small", "messages": USER, "tools": tools})
    assert ok.status_code == 200 and upstream.requests[-1]["tools"] == tools
    err = error_of(post(gw, "/v1/chat/completions", {"model": "claude", "messages": USER, "tools": tools}))
    assert err["param"] == "tools[0]" and "function tools" in err["message"]


def test_max_tokens_beyond_every_window_of_a_virtual_model(gw, upstream):
    calls = upstream.calls
    err = error_of(post(gw, "/v1/chat/completions", {"model": "auto", "messages": USER, "max_tokens": 100_000}))
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert "small (4000)" in err["message"] and "large (32000)" in err["message"]
    assert upstream.calls == calls


# -- defects the fuzzer found ---------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"model": "small", "messages": [{"role": ["user"], "content": "x"}]},  # was a 500: unhashable role
    {"model": "small", "messages": [{"role": {"a": 1}, "content": "x"}]},
])
def test_unhashable_role_is_a_400(gw, body):
    assert error_of(post(gw, "/v1/chat/completions", body))["param"] == "messages[0].role"


@pytest.mark.parametrize(("field", "value", "param"), [
    ("stop", [1, "x"], "stop[0]"),
    ("prompt", [{"a": 1}], "prompt[0]"),
])
def test_array_items_of_the_wrong_type(gw, field, value, param):
    path = "/v1/completions" if field == "prompt" else "/v1/chat/completions"
    body = {"model": "small", "prompt": "hi"} if field == "prompt" else {"model": "small", "messages": USER}
    assert error_of(post(gw, path, {**body, field: value}))["param"] == param


def test_content_parts_must_be_typed_objects(gw):
    body = {"model": "small", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, 7]}]}
    assert error_of(post(gw, "/v1/chat/completions", body))["param"] == "messages[0].content[1]"


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def nested_json(depth: int) -> bytes:
    """A request whose ``metadata`` nests ``depth`` objects (written by hand: encoders stop earlier)."""
    deep = b'{"a":' * (depth - 1) + b'"leaf"' + b"}" * (depth - 1)
    return b'{"model": "small", "messages": [{"role": "user", "content": "hello"}], "metadata": ' + deep + b"}"


def test_nesting_depth_is_bounded_before_anything_re_encodes_the_body(gw, upstream, caplog):
    # was a 500 (orjson refuses to encode past 254 levels: cache key, upstream body, audit record)
    schema = {"type": "json_schema", "json_schema": {"name": "deep", "schema": nested(MAX_DEPTH - 2)}}
    ok = post(gw, "/v1/chat/completions", {"model": "small", "messages": USER, "response_format": schema})
    assert ok.status_code == 200
    for depth in (MAX_DEPTH + 1, 300, 1000, 2000):
        err = error_of(post(gw, "/v1/chat/completions", nested_json(depth)))
        assert err["type"] == "invalid_request_error"
    assert not [r for r in caplog.records if r.name.startswith("gateway") and r.exc_info]


def test_nesting_exceeds_counts_levels_without_recursion():
    assert not nesting_exceeds({"a": [1, {"b": []}]}, 4) and nesting_exceeds({"a": [1, {"b": []}]}, 3)
    assert nesting_exceeds(nested(10_000), 100)  # iterative: no RecursionError


def test_authorization_that_is_not_utf8_is_a_401_and_still_logged(gw, caplog):
    # was a 500 (UnicodeEncodeError hashing the key), then a failing access-log line in complete()
    resp = httpx.post(gw.base_url + "/chat/completions", content=orjson.dumps({"model": "small", "messages": USER}),
                      headers={"authorization": b"Bearer \xff\xfe", "content-type": "application/json"})
    assert resp.status_code == 401 and error_of(resp)["code"] == "invalid_api_key"
    assert not [r for r in caplog.records if r.name.startswith("gateway") and r.levelno >= logging.ERROR]


def test_free_models_and_huge_reservations_settle_on_redis(make_gateway, upstream, backup, claude,  # noqa: F811
                                                           redis_url, tmp_path):
    # was: every request to a free model failed its budget settle on Redis (HINCRBY refuses '-0') and
    # stayed queued for replay forever; a huge worst case overflowed HINCRBY and looked like an outage
    state = f"backend: redis\n  redis_url: {redis_url}"
    gw = make_gateway(full_policy(upstream.url, backup.url, claude.url, state, tmp_path))
    client, budget = gw.client(PLAIN_KEY), gw.services.budget
    assert client.chat.completions.create(model="demo", messages=USER).choices  # unpriced: reserves 0
    # 128 x (2**31 - 1) tokens at 60 USD/M is ~1.6e19 pico-dollars, past 64 bits: the hold is capped
    assert client.chat.completions.create(model="wide", messages=USER, n=128, max_tokens=2**31 - 1).choices
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="wide", messages=USER, max_tokens=2**31)
    assert exc.value.body["param"] == "max_tokens"
    assert budget.counts["settle_failed"] == 0 and budget.counts["backend_error"] == 0 and not budget.pending


def test_gzip_body_that_is_not_gzip(gw):
    body = orjson.dumps({"model": "small", "messages": USER})
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        headers = {"authorization": f"Bearer {PLAIN_KEY}", "content-type": "application/json",
                   "content-encoding": "gzip"}
        bad = client.post("/v1/chat/completions", content=body, headers=headers)
        assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_body"
        assert bad.headers["connection"] == "close"  # the connection is not reused after a broken body
        unread = client.post("/v1/chat/completions", content=body, headers={**headers, "authorization": "x"})
        assert unread.status_code == 401 and unread.headers["connection"] == "close"
        good = client.post("/v1/chat/completions", content=gzip.compress(body), headers=headers)
        assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"] == "Echo: hello"


@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + REDACTED_KEY.encode()
    + b"\x00\r\nContent-Length: 2\r\n\r\n{}",  # a control byte in a header
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: " + b"r" * 10_000
    + b"\r\nContent-Length: 2\r\n\r\n{}",  # a header over aiohttp's 8 KB limit
    b"P\x00ST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n",  # a broken request line
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
])
def test_malformed_http_gets_an_openai_error_without_echoing_the_request(gw, caplog, request_bytes):
    caplog.set_level(logging.DEBUG)
    status, headers, body = raw_http(gw, request_bytes)
    assert status == 400 and headers["content-type"].startswith("application/json") and headers["x-request-id"]
    assert error_shape(orjson.loads(body)) is None
    assert REDACTED_KEY.encode() not in body
    assert not [r for r in caplog.records if REDACTED_KEY in r.getMessage() or (r.exc_info and r.levelno >= 40)]
    assert httpx.get(gw.url + "/healthz").status_code == 200


def test_a_body_that_stops_arriving_is_a_408(make_gateway, upstream, backup, claude, tmp_path):  # noqa: F811
    # was: the handler waited for the rest of the body forever (aiohttp has no body timeout)
    gw = make_gateway(full_policy(upstream.url, backup.url, claude.url, "backend: memory", tmp_path)
                      + "\nserver: {body_timeout_s: 0.3}\n")
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PLAIN_KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    status, headers, body = raw_http(gw, head + b'{"model": "small"')
    assert status == 408 and orjson.loads(body)["error"]["code"] == "request_timeout"
    assert headers["connection"] == "close" and headers["x-request-id"]


def test_unknown_paths_and_methods_are_openai_errors(gw):
    wrong_method = httpx.get(gw.base_url + "/chat/completions")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert error_of(wrong_method)["code"] == "method_not_allowed"
    with pytest.raises(openai.NotFoundError) as exc:
        gw.client(REDACTED_KEY).post("/assistants", body={"model": "small"}, cast_to=object)
    assert exc.value.body["code"] == "unknown_url"
    assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}
