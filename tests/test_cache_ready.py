"""A hit's body from a ``Stamp`` is ``restamp_body``'s, byte for byte; ready entries are decoded once."""

from __future__ import annotations

import re

import orjson
import pytest

from gateway.cache import restamp as restamp_module
from gateway.cache.entry import Entry
from gateway.cache.ready import ReadyEntries
from gateway.cache.restamp import Stamp, restamp_body, stamp_of
from gateway.usage import Usage

CHAT = (b'{"id": "chatcmpl-abc", "object": "chat.completion", "created": 5, "model": "m",\n'
        b' "choices": [{"index": 0, "message": {"role": "assistant", "content": "id \\"created\\": 5"},'
        b' "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}')
BODIES = [
    CHAT,
    b'{"created":1,"object":"text_completion","id":"cmpl-1","choices":[{"text":"hi","finish_reason":"stop"}]}',
    b'{"object":"chat.completion","choices":[]}',  # neither field: re-encoded compact all the same
    b'{"id":"x\\u00e9\\"-1","created":2}',  # a prefix that needs escaping
    b'{"id":7,"created":"later"}',  # odd values: replaced like any other
    b'{"id":"nodash"}',
]
HEX = re.compile(rb'[0-9a-f]{24}"')


def same_but_id(a: bytes, b: bytes) -> bool:
    """Equal once the random part of each new id is blanked."""
    return HEX.sub(b'"', a) == HEX.sub(b'"', b)


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stamp_writes_what_restamp_body_writes(body, endpoint):
    stamp = stamp_of(body, endpoint)
    assert isinstance(stamp, Stamp)
    out, expected = stamp(1234), restamp_body(body, endpoint, 1234)
    assert same_but_id(out, expected)
    assert orjson.loads(out).get("created", None) == orjson.loads(expected).get("created", None)
    if "id" in orjson.loads(body):
        assert orjson.loads(out)["id"] != orjson.loads(stamp(1234))["id"]  # a new id per hit


@pytest.mark.parametrize("body, endpoint", [
    (b'{"object":"list","data":[{"embedding":[0.1]}]}', "embeddings"),  # no id: served as stored
    (b"not json", "chat"),
    (b"[1, 2]", "chat"),
])
def test_bodies_served_as_stored_have_no_stamp(body, endpoint):
    assert stamp_of(body, endpoint) is None
    assert restamp_body(body, endpoint, 1) is body


def test_an_answer_holding_the_mark_is_restamped_the_slow_way(monkeypatch):
    monkeypatch.setattr(restamp_module, "_ID", "chatcmpl-abc")  # as if the content held the mark
    stamp = stamp_of(b'{"id":"chatcmpl-abc","created":1,"note":"chatcmpl-abc"}', "chat")
    assert not isinstance(stamp, Stamp) and stamp is not None
    out = orjson.loads(stamp(9))
    assert out["note"] == "chatcmpl-abc" and out["id"] != "chatcmpl-abc" and out["created"] == 9


def entry_bytes(body: bytes = CHAT, created: float = 100.0) -> bytes:
    return Entry(body=body, created=created, ttl_s=60.0, model="m", usage=Usage(3, 4)).encode()


def test_ready_entries_decode_each_stored_value_once():
    ready = ReadyEntries()
    raw = entry_bytes()
    first = ready.get("k", raw, "chat")
    assert first is not None and first.entry.usage == Usage(3, 4) and first.entry.created == 100.0
    assert ready.get("k", raw, "chat") is first
    assert ready.get("k", bytes(bytearray(raw)), "chat") is first  # equal bytes (from Redis): the same
    newer = ready.get("k", entry_bytes(created=200.0), "chat")  # rewritten: decoded again
    assert newer is not first and newer.entry.created == 200.0
    assert ready.get("k", b"garbage", "chat") is None and len(ready) == 0
    embeddings = ready.get("e", entry_bytes(b'{"object":"list","data":[]}'), "embeddings")
    assert embeddings is not None and embeddings.body(1) is embeddings.entry.body


def test_ready_entries_are_bounded_oldest_first():
    ready = ReadyEntries(max_entries=2, max_bytes=16 * 10_000)
    for key in ("a", "b", "c"):
        ready.get(key, entry_bytes(), "chat")
    assert len(ready) == 2 and ready.get("b", entry_bytes(), "chat") is not None
    big = entry_bytes(b'{"id":"x-1","pad":"' + b"x" * 20_000 + b'"}')
    assert ready.get("big", big, "chat") is not None and len(ready) <= 2  # too large to keep: served, not kept
    small = ReadyEntries(max_entries=100, max_bytes=16 * 600)
    for i in range(20):
        small.get(str(i), entry_bytes(), "chat")
    assert 0 < small._bytes <= small.max_bytes
