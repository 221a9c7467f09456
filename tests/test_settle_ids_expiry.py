"""The memory twin of the settle script forgets settle ids after ``settled_ids_ttl_s``, oldest first.

It used to scan every remembered id on each settle (6 h of them by default), which the soak benchmark
showed as throughput falling from 255 to 60 req/s within 10 minutes; it now stops at the first live id.
This holds what must not change: live ids still make a replay a no-op, expired ones are forgotten.
"""

from __future__ import annotations

from gateway.budget.ledger import Charge, Ledger
from gateway.clock import FakeClock
from gateway.state import MemoryBackend


def charge(rid: str) -> Charge:
    return Charge(rid, 10, ("gw:{t}:bud:t:d1",), (3_600_000,), "gw:{t}:spend:day", 0, ())


async def test_live_ids_stay_remembered_and_expired_ones_are_forgotten_in_order():
    clock = FakeClock(1_750_000_000.0)
    ledger = Ledger(MemoryBackend(clock=clock), settled_ttl_s=10)
    applied = [(await ledger.settle_once(charge(rid)))[0] for rid in ("a", "b")]
    clock.advance(5)
    applied.append((await ledger.settle_once(charge("c")))[0])
    clock.advance(6)  # a and b are 11 s old, c 6 s
    applied.append((await ledger.settle_once(charge("d")))[0])
    replays = {rid: (await ledger.settle_once(charge(rid)))[0] for rid in ("c", "d", "a")}
    spent = (await ledger.settle(charge("d")))[0][0]
    print(f"\nfirst settles applied {applied}; replays applied {replays}; spent {spent}")
    assert applied == [True] * 4
    assert replays == {"c": False, "d": False, "a": True}  # a was forgotten after its 10 s
    assert spent == 50
