"""Unit tests for cache entries, stream <-> body conversion, the byte-bounded store and flights."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.cache.convert import assemble, replay
from gateway.cache.entry import Entry, entry_from_answer, entry_from_body
from gateway.cache.flight import FlightTable
from gateway.cache.store import ENTRY_OVERHEAD, MemoryStore
from gateway.clock import FakeClock
from gateway.errors import UpstreamError
from gateway.policy.model import ModelSpec, Price
from gateway.stages.cache import saved_usd
from gateway.usage import Usage

BASE = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def chunk(**choice) -> bytes:
    return orjson.dumps({**BASE, "choices": [{"index": 0, **choice}]})


def test_assemble_merges_content_tool_calls_and_usage():
    chunks = [
        chunk(delta={"role": "assistant", "content": ""}),
        chunk(delta={"content": "Hel"}),
        chunk(delta={"content": "lo"}),
        chunk(delta={"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get", "arguments": '{"a"'}}]}),
        chunk(delta={"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        chunk(delta={}, finish_reason="tool_calls"),
        orjson.dumps({**BASE, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                          "total_tokens": 5}}),
    ]
    out = assemble(chunks, "chat")
    assert out["object"] == "chat.completion" and out["usage"]["total_tokens"] == 5
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Hello"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}]


def test_replay_then_assemble_round_trips():
    body = {"id": "x", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "logprobs": None,
                         "finish_reason": "stop"},
                        {"index": 1, "message": {"role": "assistant", "content": "Yo"}, "logprobs": None,
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}
    chunks = replay(body, "chat", with_usage=True)
    assert orjson.loads(chunks[-1])["usage"] == body["usage"]
    assert assemble(chunks, "chat") == body
    assert all("usage" not in orjson.loads(c) for c in replay(body, "chat", with_usage=False))


def test_legacy_completions_round_trip():
    body = {"id": "x", "object": "text_completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": "stop"}]}
    assert assemble(replay(body, "completions", with_usage=False), "completions") == body


def test_unfinished_or_erroneous_answers_make_no_entry():
    unfinished = assemble([chunk(delta={"content": "Hel"})], "chat")
    assert entry_from_answer(unfinished, 0, 60, "m") is None
    assert assemble([orjson.dumps({"error": {"message": "boom"}})], "chat") is None
    assert entry_from_body(b'{"error": {"message": "x"}}', 0, 60, "m") is None
    assert entry_from_body(b"not json", 0, 60, "m") is None


def test_entry_encoding_round_trips_and_rejects_foreign_values():
    entry = Entry(body=b'{"a": "line\\nbreak"}', created=100.0, ttl_s=60.0, model="small",
                  usage=Usage(3, 4, 1, 0))
    again = Entry.decode(entry.encode())
    assert again == entry
    assert Entry.decode(b"garbage") is None and Entry.decode(b'{"v": 99}\n{}') is None
    assert entry.fresh(159.0) and not entry.fresh(160.0) and not entry.fresh(130.0, max_age_s=10)


def test_memory_store_is_bounded_in_bytes_and_expires():
    clock = FakeClock()
    store = MemoryStore(max_bytes=3 * (100 + ENTRY_OVERHEAD), clock=clock)
    run = asyncio.run
    for i in range(4):
        run(store.set(f"k{i}", b"x" * 100, ttl_s=10))
    assert len(store) == 3 and run(store.get("k0")) is None  # least recently used went first
    assert store.used_bytes <= store.max_bytes
    run(store.set("huge", b"x" * 10_000, ttl_s=10))  # larger than the whole store: not kept
    assert run(store.get("huge")) is None and len(store) == 3
    clock.advance(11)
    assert run(store.get("k3")) is None
    store.resize(10_000)
    assert store.max_bytes == 10_000


def test_memory_store_drops_expired_entries_before_live_ones_and_a_read_refreshes_an_entry():
    clock = FakeClock()
    store = MemoryStore(max_bytes=3 * (100 + ENTRY_OVERHEAD), clock=clock)
    run = asyncio.run
    run(store.set("old", b"x" * 100, ttl_s=100))
    run(store.set("brief", b"x" * 100, ttl_s=5))
    run(store.set("new", b"x" * 100, ttl_s=100))
    assert store.get_now("old") == b"x" * 100  # read: now the most recently used
    clock.advance(6)
    run(store.set("more", b"x" * 100, ttl_s=100))  # the expired entry makes room, no live one goes
    assert [store.get_now(k) is not None for k in ("old", "brief", "new", "more")] == [True, False, True, True]
    assert store.get_now("old") is not None  # read again: "new" is now the least recently used
    run(store.set("last", b"x" * 100, ttl_s=100))  # full: the least recently used goes
    assert store.get_now("old") is not None and store.get_now("new") is None
    run(store.set("old", b"y" * 100, ttl_s=-1))  # stored already expired: the entry goes
    assert store.get_now("old") is None and len(store) == 2 and store.used_bytes == 2 * (100 + ENTRY_OVERHEAD)


def test_saved_cost_uses_the_serving_models_price():
    model = ModelSpec(name="m", price=Price(input=1.0, output=2.0, cached_input=0.5))
    assert saved_usd(model, Usage(prompt_tokens=1_000_000, completion_tokens=500_000)) == pytest.approx(2.0)
    assert saved_usd(model, Usage(prompt_tokens=1_000_000, cached_tokens=1_000_000)) == pytest.approx(0.5)
    assert saved_usd(ModelSpec(name="free"), Usage(10, 10)) == 0.0 and saved_usd(model, None) == 0.0


async def test_flight_followers_and_failure():
    table = FlightTable()
    flight = table.lead("k", "chat")
    assert table.get("k") is flight and flight.join()
    assert not await flight.wait(lambda f: False, 0.01)  # bounded: times out
    flight.fail(UpstreamError("5xx", "boom"))
    assert table.get("k") is None  # a failed flight is never joined again
    assert not flight.join()


async def test_flight_stream_is_shared_and_stops_when_everyone_leaves():
    gate = asyncio.Event()

    async def events():
        yield b"1"
        await gate.wait()
        yield b"2"

    released: list[bool] = []

    async def release() -> None:
        released.append(True)

    async def then(_flight) -> None:
        return None

    table = FlightTable()
    flight = table.lead("k", "chat")
    flight.start_stream(events(), release, lambda f: None, then)
    assert flight.join()
    assert await flight.wait(lambda f: bool(f.chunks), 1.0) and flight.chunks == [b"1"]
    flight.leave()
    flight.leave()  # the last participant: the pump is cancelled and the upstream released
    with pytest.raises(asyncio.CancelledError):
        await flight.pump
    assert flight.state == "failed" and released == [True] and table.get("k") is None
