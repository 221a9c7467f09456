"""Feedback records on a shared backend: in the request's ``complete`` call, else in batches (issue 15).

A request whose ``complete`` makes a state call anyway (settle, release) adds its record to that call
(``FeedbackRecordStage``): no call of its own, found on this replica while the call runs, counted as
dropped if it fails. Other records are buffered when the answer is sent; ``POST /v1/feedback`` on the
same replica finds one while it is buffered or being written; a batch is one ``set_many`` call (one
script on a real redis-server); shutdown writes what is left; past the cap records are dropped and
counted. The memory backend keeps records in process.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from gateway.observability.feedback import RequestRecords, record_key
from gateway.observability.metered import TRACED_CALLS
from gateway.observability.record_batch import BatchWriter
from gateway.stages.feedback_record import FeedbackRecordStage
from gateway.stages.state_batch import StateBatch
from gateway.state import MemoryBackend, RedisBackend, StateError
from gateway.state.base import hash_tag
from gateway.state.fused import SetOp

POLICY: Any = SimpleNamespace(state=SimpleNamespace(key_prefix="gw"))


class Shared(MemoryBackend):
    """The memory backend posing as a shared one (so records are written through it), counting calls."""

    kind = "redis"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[tuple[str, bytes, float | None]]] = []
        self.gate: asyncio.Event | None = None  # set: writes wait for it
        self.fail = False
        self.traced: list[Any] = []  # the traced request's call list each write ran under
        self.fused: list[list[str]] = []  # the fragments of each fused call

    async def set_many(self, items: list[tuple[str, bytes, float | None]]) -> None:
        self.calls.append(list(items))
        self.traced.append(TRACED_CALLS.get())
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise StateError("connection refused")
        await super().set_many(items)

    async def run_fused(self, ops: list[Any]) -> list[Any]:
        self.fused.append([op.fragment.name for op in ops])
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise StateError("connection refused")
        return await super().run_fused(ops)


def answered(request_id: str, tenant: str = "acme", ttl: float = 60.0, batch: StateBatch | None = None) -> Any:
    """The context fields ``remember`` reads, of a request answered 200 (``batch``: its state batch)."""
    return SimpleNamespace(
        tenant=SimpleNamespace(name=tenant, audit=SimpleNamespace(feedback_ttl_s=ttl)),
        model=SimpleNamespace(name="small-a"), status=200, public_model="small", route="small",
        deployment=SimpleNamespace(name="up/small-a"), rollout=None, policy=POLICY, request_id=request_id,
        state_batch=batch)


async def _settled(reply: Any, error: StateError | None) -> None:
    return None


def settling() -> StateBatch:
    """A batch whose ``complete`` makes a call anyway (a settle's stand-in: any op)."""
    batch = StateBatch()
    batch.add("complete", SetOp(f"{hash_tag('gw', 'acme')}:settle", b"1", 60.0), _settled)
    return batch


async def test_a_record_rides_completes_call_and_is_found_while_it_runs() -> None:
    backend = Shared()
    backend.gate = asyncio.Event()
    records = RequestRecords(backend)
    batch = settling()
    FeedbackRecordStage(records).complete(answered("r1", batch=batch), None)
    flush = asyncio.create_task(batch.flush(backend, "complete"))
    await asyncio.sleep(0)
    key = record_key(POLICY, "acme", "r1")
    assert backend.fused == [["set", "set"]] and await backend.get(key) is None  # one call, under way
    assert (await records.lookup(POLICY, "acme", "r1") or {})["served_model"] == "small-a"  # in flight
    backend.gate.set()
    await flush
    assert backend.store.ttl(key) == pytest.approx(60, abs=1) and len(records.writer) == 0
    assert (await records.lookup(POLICY, "acme", "r1") or {})["route"] == "small"  # from the backend
    await records.drain()
    assert backend.calls == [] and records.dropped == 0  # no batch of its own


async def test_a_failed_complete_call_loses_the_record_counted_as_dropped() -> None:
    backend = Shared()
    backend.fail = True
    records = RequestRecords(backend)
    batch = settling()
    FeedbackRecordStage(records).complete(answered("r1", batch=batch), None)
    await batch.flush(backend, "complete")
    assert records.dropped == 1 and len(records.writer) == 0
    backend.fail = False
    assert await records.lookup(POLICY, "acme", "r1") is None
    await records.drain()
    assert backend.calls == []  # not retried in a batch: lost like a failed batch's records


async def test_records_of_calls_that_never_report_are_bounded() -> None:
    """A request cancelled during its ``complete`` call never runs its finishers: its record is
    forgotten once ``cap`` newer ones are riding, and no batch writer room is taken."""
    writer = BatchWriter(Shared(), interval_s=60, cap=2)
    for i in range(3):
        writer.sending(f"k{i}", b"v%d" % i)
    assert writer.get("acme", "k0") is None and writer.get("acme", "k2") == b"v2" and len(writer) == 0
    writer.add("acme", "b", b"v", 10)
    writer.add("acme", "c", b"v", 10)
    assert writer.dropped == 0
    writer.sent("k1", b"other", None)  # an older call of the same key: the newer record stays
    assert writer.get("acme", "k1") == b"v1"
    writer.flush()
    await writer.drain()


@pytest.mark.parametrize("case", ["no batch", "no complete work", "only a local op"])
async def test_a_request_without_a_complete_call_leaves_its_record_to_a_batch(case: str) -> None:
    backend = Shared()
    records = RequestRecords(backend)
    batch = None if case == "no batch" else StateBatch()
    if case == "only a local op":  # e.g. a release kept for replay while the backend is down
        batch.add("complete", None, _settled)  # type: ignore[union-attr]
    if batch is not None:
        batch.add("admit", SetOp("k", b"", 1.0), _settled)
    FeedbackRecordStage(records).complete(answered("r1", batch=batch), None)
    assert records.writer.get("acme", record_key(POLICY, "acme", "r1")) is not None  # buffered
    if batch is not None:
        await batch.flush(backend, "complete")
    assert backend.fused == []  # no call made for the record
    await records.drain()
    assert len(backend.calls) == 1


async def test_on_the_memory_backend_records_stay_in_process() -> None:
    backend = MemoryBackend()
    records = RequestRecords(backend)
    batch = settling()
    FeedbackRecordStage(records).complete(answered("r1", batch=batch), None)
    assert batch.queued() == 1 and len(records.local) == 1
    assert await backend.get(record_key(POLICY, "acme", "r1")) is None
    assert (await records.lookup(POLICY, "acme", "r1") or {})["deployment"] == "up/small-a"


def test_the_record_stage_applies_only_to_tenants_that_keep_records() -> None:
    stage = FeedbackRecordStage(RequestRecords(MemoryBackend()))
    keeps = SimpleNamespace(audit=SimpleNamespace(feedback_ttl_s=60.0))
    off = SimpleNamespace(audit=SimpleNamespace(feedback_ttl_s=0.0))
    assert stage.applies(SimpleNamespace(tenant=None)) is True  # type: ignore[arg-type]
    assert stage.applies(SimpleNamespace(tenant=keeps)) is True  # type: ignore[arg-type]
    assert stage.applies(SimpleNamespace(tenant=off)) is False  # type: ignore[arg-type]


async def test_records_of_a_tenant_are_one_call_and_readable_once_written() -> None:
    backend = Shared()
    records = RequestRecords(backend)
    for i in range(5):
        records.remember(answered(f"r{i}"))
    records.remember(answered("b0", tenant="beta"))
    assert backend.calls == []  # nothing written on the request path
    await asyncio.sleep(records.writer.interval_s * 3)  # the flush timer fires once
    assert sorted(len(call) for call in backend.calls) == [1, 5]  # one call per tenant
    for call in backend.calls:
        assert len({key_slot(key.encode()) for key, _, _ in call}) == 1  # one cluster slot each
    raw = await backend.get(record_key(POLICY, "acme", "r3"))
    assert raw is not None and backend.store.ttl(record_key(POLICY, "acme", "r3")) == pytest.approx(60, abs=1)
    assert await records.lookup(POLICY, "acme", "r3") == {
        "model": "small", "served_model": "small-a", "route": "small", "deployment": "up/small-a", "variant": None}
    assert len(records.writer) == 0


async def test_a_full_batch_goes_at_once() -> None:
    backend = Shared()
    writer = BatchWriter(backend, interval_s=60, batch=3)
    for i in range(7):
        writer.add("acme", f"k{i}", b"v", 10)
    await asyncio.sleep(0)
    assert [len(call) for call in backend.calls] == [3, 3]
    await writer.drain()
    assert [len(call) for call in backend.calls] == [3, 3, 1]


async def test_a_buffered_or_in_flight_record_is_found_without_a_backend_read() -> None:
    backend = Shared()
    backend.gate = asyncio.Event()
    records = RequestRecords(backend)
    records.remember(answered("r1"))
    assert (await records.lookup(POLICY, "acme", "r1") or {})["served_model"] == "small-a"  # buffered
    assert await records.lookup(POLICY, "beta", "r1") is None  # another tenant's request id
    records.writer.flush()
    await asyncio.sleep(0)
    assert len(backend.calls) == 1 and await backend.get(record_key(POLICY, "acme", "r1")) is None
    assert (await records.lookup(POLICY, "acme", "r1") or {})["route"] == "small"  # in flight
    backend.gate.set()
    await records.drain()
    assert await backend.get(record_key(POLICY, "acme", "r1")) is not None
    assert (await records.lookup(POLICY, "acme", "r1") or {})["deployment"] == "up/small-a"  # from the backend


async def test_shutdown_writes_what_is_buffered() -> None:
    backend = Shared()
    records = RequestRecords(backend)
    records.remember(answered("last"))
    await records.drain()  # before the timer would have fired
    assert len(backend.calls) == 1 and await backend.get(record_key(POLICY, "acme", "last")) is not None
    assert records.writer._timer is None


async def test_past_the_cap_records_are_dropped_and_a_failed_batch_is_counted() -> None:
    backend = Shared()
    backend.gate = asyncio.Event()
    writer = BatchWriter(backend, interval_s=60, batch=2, cap=3)
    for i in range(5):
        writer.add("acme", f"k{i}", b"v", 10)
    assert len(writer) == 3 and writer.dropped == 2  # two in flight, one buffered
    backend.fail = True
    backend.gate.set()
    await writer.drain()
    assert writer.dropped == 5 and len(writer) == 0


async def test_a_batch_is_no_requests_work_in_its_trace() -> None:
    backend = Shared()
    records = RequestRecords(backend)
    TRACED_CALLS.set([])  # as the tracing stage sets it for a traced request
    records.remember(answered("traced"))
    records.remember(answered("full", tenant="beta"))
    records.writer.flush()
    await records.drain()
    assert len(backend.calls) == 2 and backend.traced == [None, None]


async def test_set_many_on_redis_is_one_script_call(redis_server) -> None:
    backend = RedisBackend(redis_server.url, timeout_ms=1000)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await backend.set("gone", b"x")
        await backend.set_many([("warm", b"", 1.0)])  # the script loaded (a first call is EVALSHA, then EVAL)
        tag = hash_tag("gw", "acme")
        before = await client.info("commandstats")
        await backend.set_many([(f"{tag}:a", b"1", 30.0), (f"{tag}:b", b"2", None), ("gone", b"y", 0)])
        after = await client.info("commandstats")
        scripts = sum(after.get(f"cmdstat_{c}", {}).get("calls", 0) - before.get(f"cmdstat_{c}", {}).get("calls", 0)
                      for c in ("evalsha", "eval"))
        assert scripts == 1
        assert await backend.get(f"{tag}:a") == b"1" and 29_000 < await client.pttl(f"{tag}:a") <= 30_000
        assert await backend.get(f"{tag}:b") == b"2" and await client.pttl(f"{tag}:b") == -1
        assert await backend.get("gone") is None  # a ttl of 0: already expired, as on memory
        await backend.set_many([])
    finally:
        await client.aclose()
        await backend.close()


async def test_set_many_on_memory_replaces_values_and_expiry() -> None:
    backend = MemoryBackend()
    await backend.set("k", b"old", 5)
    await backend.set_many([("k", b"new", None), ("t", b"v", 5), ("z", b"v", -1)])
    assert await backend.get("k") == b"new" and backend.store.ttl("k") is None
    assert await backend.get("t") == b"v" and await backend.get("z") is None


def test_feedback_on_redis_finds_a_fresh_answer_and_shutdown_writes_every_record(make_gateway, upstream, redis_url):
    import redis as sync_redis
    import urllib3

    from tests.support.policies import basic_policy

    gw = make_gateway(basic_policy(upstream.url, state=f"backend: redis\n  redis_url: {redis_url}"))
    client = gw.client("sk-acme")
    for i in range(3):
        client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-request-id": f"fresh-{i}"})
    resp = urllib3.request("POST", gw.base_url + "/feedback", json={"request_id": "fresh-2", "score": 1},
                           headers={"Authorization": "Bearer sk-acme"})  # no wait: buffered or written, found
    assert resp.status == 201 and resp.json()["model"] == "small"
    gw.stop()
    r = sync_redis.Redis.from_url(redis_url)
    try:
        for i in range(3):
            assert r.exists(f"gw:{{acme}}:req:fresh-{i}") and r.pttl(f"gw:{{acme}}:req:fresh-{i}") > 0
    finally:
        r.close()
