"""Unit tests for the pure parts of the cache: the key, determinism and request controls."""

from __future__ import annotations

import orjson
import pytest

from gateway.cache.controls import parse_controls
from gateway.cache.key import cache_key, canonical, is_deterministic

BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 5}


def key(body: dict, tenant: str = "acme", shared: bool = False, endpoint: str = "chat", model: str = "small") -> str:
    return cache_key("gw", tenant, shared, endpoint, model, body)


def test_key_ignores_field_order_and_answer_neutral_fields():
    reordered = {"max_tokens": 5, "temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "x"}
    neutral = {**BODY, "user": "u1", "stream": True, "stream_options": {"include_usage": True},
               "metadata": {"a": "b"}, "store": False}
    assert key(BODY) == key(reordered) == key(neutral)


@pytest.mark.parametrize("change", [
    {"messages": [{"role": "user", "content": "hi!"}]},
    {"temperature": 0.5},
    {"top_p": 0.9},
    {"seed": 1},
    {"max_tokens": 6},
    {"stop": ["\n"]},
    {"n": 2},
    {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"tool_choice": "auto"},
    {"response_format": {"type": "json_object"}},
    {"some_future_field": 1},  # unknown fields separate entries: safe by default
])
def test_answer_determining_fields_change_the_key(change):
    assert key({**BODY, **change}) != key(BODY)


def test_key_is_namespaced_by_tenant_endpoint_and_public_model():
    assert key(BODY, tenant="acme") != key(BODY, tenant="beta")
    assert key(BODY, endpoint="chat") != key(BODY, endpoint="completions")
    assert key(BODY, model="small") != key(BODY, model="large")
    assert key(BODY).startswith("gw:{t.acme}:cache:")


def test_shared_namespace_is_one_for_all_and_unreachable_by_a_tenant_name():
    assert key(BODY, tenant="acme", shared=True) == key(BODY, tenant="beta", shared=True)
    assert key(BODY, tenant="shared") != key(BODY, tenant="acme", shared=True)
    assert key(BODY, shared=True).startswith("gw:{shared}:cache:")


def test_canonical_form_is_sorted_compact_json():
    assert canonical("chat", "small", {"b": 1, "a": [2], "user": "x"}) == b'["chat","small",{"a":[2],"b":1}]'


@pytest.mark.parametrize("body, expected", [
    ({}, False),  # no temperature: the API default 1, sampled
    ({"temperature": None}, False),
    ({"temperature": 0}, True),
    ({"temperature": 0.0, "seed": None}, True),
    ({"temperature": 0.7}, False),
    ({"temperature": 0.7, "seed": 42}, True),
    ({"seed": 7}, True),
    ({"temperature": 1, "seed": 0}, True),
    ({"temperature": False}, False),
    ({"temperature": "0"}, False),
])
def test_is_deterministic(body, expected):
    assert is_deterministic(body) is expected


def test_embeddings_are_always_deterministic():
    assert is_deterministic({"input": "x"}, "embeddings") is True
    assert is_deterministic({"input": "x"}, "completions") is False


def test_fresh_ids_keep_the_prefix_and_differ():
    from gateway.cache.restamp import ChunkStamper, fresh_id, restamp_body

    a, b = fresh_id("chatcmpl-abc", "chat"), fresh_id("chatcmpl-abc", "chat")
    assert a.startswith("chatcmpl-") and b.startswith("chatcmpl-") and len({a, b, "chatcmpl-abc"}) == 3
    assert fresh_id(None, "completions").startswith("cmpl-")
    body = b'{"id":"cmpl-1","object":"text_completion","created":5,"choices":[{"text":"hi"}]}'
    out = orjson.loads(restamp_body(body, "completions", 99))
    assert out["id"].startswith("cmpl-") and out["id"] != "cmpl-1" and out["created"] == 99
    assert out["choices"] == [{"text": "hi"}]
    embedding = b'{"object":"list","data":[{"embedding":[0.1]}]}'
    assert restamp_body(embedding, "embeddings", 99) is embedding
    stamp = ChunkStamper("chat", 7)
    chunks = [orjson.loads(stamp(orjson.dumps({"id": "chatcmpl-x", "created": 1, "n": i}))) for i in range(3)]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"] != "chatcmpl-x"
    assert [c["created"] for c in chunks] == [7, 7, 7] and [c["n"] for c in chunks] == [0, 1, 2]


@pytest.mark.parametrize("headers, lookup, store, max_age, ttl", [
    ({}, True, True, None, 60.0),
    ({"cache-control": "no-cache"}, False, True, None, 60.0),
    ({"cache-control": "no-store"}, True, False, None, 60.0),
    ({"cache-control": "No-Cache, NO-STORE"}, False, False, None, 60.0),
    ({"cache-control": "max-age=30"}, True, True, 30.0, 60.0),
    ({"cache-control": "max-age=0"}, True, True, 0.0, 60.0),
    ({"cache-control": "max-age=abc, private"}, True, True, None, 60.0),
    ({"x-gateway-cache-ttl": "10"}, True, True, None, 10.0),
    ({"x-gateway-cache-ttl": "600"}, True, True, None, 60.0),  # lowers, never raises
    ({"x-gateway-cache-ttl": "0"}, True, False, None, 0.0),
    ({"x-gateway-cache-ttl": "-5"}, True, True, None, 60.0),  # malformed: ignored
    ({"x-gateway-cache-ttl": "soon"}, True, True, None, 60.0),
])
def test_parse_controls(headers, lookup, store, max_age, ttl):
    c = parse_controls(headers, 60.0)
    assert (c.lookup, c.store, c.max_age_s, c.ttl_s) == (lookup, store, max_age, ttl)
