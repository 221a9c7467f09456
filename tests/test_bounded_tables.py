"""Every in-process per-request table is bounded by count as well as by time, oldest dropped first, counted.

Was (issue 14): the soak benchmark's RSS grew ~1.3 KB per request for as long as the TTLs ran (feedback
records 1 h, settle ids 5 min): at a few hundred requests a second that is hundreds of MB before
anything expires. Now each has a declared maximum (``feedback.MAX_LOCAL``, ``ledger.LOCAL_IDS_MAX``);
past it the oldest go first, counted in ``llm_gateway_memory_evictions_total{table}``.
"""

from __future__ import annotations

import pytest

from gateway.budget import ledger
from gateway.budget.ledger import Charge, Ledger
from gateway.clock import FakeClock
from gateway.observability import feedback
from gateway.state import MemoryBackend


def charge(rid: str) -> Charge:
    return Charge(rid, 10, ("gw:{t}:bud:t:d1",), (3_600_000,), "gw:{t}:spend:day", 0, ())


async def test_settle_ids_stay_under_their_count_bound_oldest_forgotten_first(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ledger, "LOCAL_IDS_MAX", 3)
    clock = FakeClock(1_750_000_000.0)
    backend = MemoryBackend(clock=clock)
    book = Ledger(backend, settled_ttl_s=3600)  # the TTL alone would keep all of them
    before = ledger.EVICTED["settle_ids"]
    for rid in ("a", "b", "c", "d", "e"):
        assert (await book.settle_once(charge(rid)))[0]
    ids = backend.store.get("gw:{t}:settled")
    assert list(ids) == ["c", "d", "e"] and ledger.EVICTED["settle_ids"] - before == 2
    assert not (await book.settle_once(charge("e")))[0]  # a recent id still makes a replay a no-op


def test_feedback_records_stay_under_their_count_bound_oldest_dropped_first():
    records = feedback.LocalRecords(maxsize=3)
    for i in range(5):
        records.put(("t", f"k{i}"), 3600.0, ["m", "m", None, "d"])
    assert [records.get(("t", f"k{i}")) is not None for i in range(5)] == [False, False, True, True, True]
    assert len(records) == 3 and records.evicted == 2
