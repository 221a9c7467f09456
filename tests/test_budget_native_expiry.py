"""The ledger's natives on the memory store: the expiries they leave, and keys past theirs read as gone.

They read and move ``MemoryStore``'s dicts directly at one clock reading; these pin that the keys
end with the expiries ``expire`` / ``expire_nx`` gave them (a reserve pushes its scope's keys forward,
a settle only starts an expiry) and that an expired key is dropped, not read.
"""

from __future__ import annotations

import pytest

from gateway.budget.ledger import LOCAL_IDS_TTL_MS, Charge, Ledger, ScopeArgs, reserve_scopes, settle_now
from gateway.clock import FakeClock
from gateway.state import MemoryBackend

KEY = "gw:{t}:bud:t:d1"
DAY = "gw:{t}:spend:day"
SETTLED = "gw:{t}:settled"
TTL_MS = 3_600_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_750_000_000.0)


@pytest.fixture
def backend(clock: FakeClock) -> MemoryBackend:
    return MemoryBackend(clock=clock)


def scope(ttl_ms: int = TTL_MS) -> ScopeArgs:
    return ScopeArgs(KEY, 1_000, None, True, False, ttl_ms)


def charge(rid: str, cost: int, s: ScopeArgs) -> Charge:
    return Charge(rid, cost, (s.key,), (s.ttl_ms,), DAY, 86_400_000, (("m:usd", cost), ("m:n", 1)))


async def test_a_reserve_pushes_its_scope_keys_expiry_forward(backend: MemoryBackend, clock: FakeClock):
    ledger, store = Ledger(backend), backend.store
    await ledger.reserve([scope()], "a", 60, 10, None)
    assert store.ttl(KEY) == store.ttl(KEY + ":exp") == TTL_MS / 1000
    clock.advance(100)
    await ledger.reserve([scope()], "b", 60, 10, None)
    assert store.ttl(KEY) == store.ttl(KEY + ":exp") == TTL_MS / 1000
    await ledger.reserve([scope(1_000_000)], "c", 60, 10, None)  # a shorter one moves it back
    assert store.ttl(KEY) == store.ttl(KEY + ":exp") == 1_000.0


async def test_a_settle_only_starts_an_expiry_and_keeps_its_ids_briefly(backend: MemoryBackend, clock: FakeClock):
    ledger, store = Ledger(backend), backend.store
    await ledger.settle(charge("a", 5, scope()))  # no reservation: the settle creates the scope's hash
    assert store.ttl(KEY) == TTL_MS / 1000 and store.ttl(DAY) == 86_400.0
    assert store.ttl(SETTLED) == LOCAL_IDS_TTL_MS / 1000
    clock.advance(100)
    await ledger.settle(charge("b", 5, scope()))
    assert store.ttl(KEY) == TTL_MS / 1000 - 100 and store.ttl(DAY) == 86_400.0 - 100
    assert store.ttl(SETTLED) == LOCAL_IDS_TTL_MS / 1000
    assert await ledger.read([KEY, DAY]) == [{"spent": 10}, {"m:usd": 10, "m:n": 2}]


async def test_keys_past_their_expiry_are_gone_for_reserve_and_settle(backend: MemoryBackend, clock: FakeClock):
    ledger, store = Ledger(backend), backend.store
    await ledger.reserve([scope(1_000)], "a", 60, 300, None)
    await ledger.settle(charge("b", 7, scope(1_000)))
    clock.advance(LOCAL_IDS_TTL_MS / 1000)  # past the scope's keys and the settle ids, not the day record
    assert KEY in store.data  # not swept (the natives run without a sweep): they find it expired themselves
    reply = reserve_scopes(store, [scope(1_000)], [KEY + ":exp"], "c", 60, 100, None, clock.time())
    assert reply == ["main", 0, 0, 0] and store.ttl(KEY) == 1.0
    again = settle_now(store, charge("b", 7, scope(1_000)), [KEY + ":exp"], SETTLED, 60_000, clock.time())
    assert again == ["ok", 7, 100]  # its id is forgotten: it applies again
    assert await ledger.read([DAY]) == [{"m:usd": 14, "m:n": 2}]
