"""The memory backend's native limiter structures answer as the sorted-set twins do, call for call."""

from __future__ import annotations

import random

import pytest

from gateway.clock import FakeClock
from gateway.ratelimit.native import acquire_unleased
from gateway.ratelimit.scripts import ACQUIRE
from gateway.ratelimit.window import LEASE_US, WINDOW_US, acquire_entries, release_slot, settle
from gateway.state.memory import MemoryBackend, MemoryStore
from gateway.state.zset import RequestLog, TokenLog, ZSet

RPM, CONC, TPM, TPMW = "gw:{a}:rl:t:rpm", "gw:{a}:rl:t:conc", "gw:{a}:rl:t:tpm", "gw:{a}:rl:t:tpm:w"
RPM2 = "gw:{a}:rl:k:x:rpm"


def _entries(rng: random.Random, again: bool) -> list[tuple[str, int, int, str, str]]:
    """A limit_requests call (R, C, P) or an admit call (R, C, T), with small limits that bite. A
    token used ``again`` takes no request log: a request takes each of its request logs once."""
    tokens = rng.choice((0, 5, 30, 90, 200))  # 200: over the tpm limit whatever is held
    if rng.random() < 0.5:
        found = [("R", 6, 1, RPM, ""), ("R", 9, 1, RPM2, ""), ("C", 3, 1, CONC, ""), ("P", 120, 1, TPM, TPMW)]
    else:
        found = [("R", 6, 1, RPM, ""), ("C", 3, 1, CONC, ""), ("T", 120, tokens, TPM, TPMW)]
    return [e for e in found if e[0] != "R"] if again else found


def _view(store: MemoryStore) -> dict[str, object]:
    """What a limiter key holds, whatever its structure: entries in order, weights, expiry."""
    out: dict[str, object] = {}
    for key in (RPM, RPM2, CONC, TPM):
        found = store.get(key)
        if isinstance(found, RequestLog):
            found = found.times[found.head:]
        elif isinstance(found, TokenLog):
            found = (sorted(zip(found.times[found.head:], found.tokens[found.head:], strict=True)),  # ties: any order
                     found.total, dict(found.weights))
        elif isinstance(found, set):
            found = sorted(found)
        elif isinstance(found, ZSet):
            if key == TPM:
                weights = dict(store.get(TPMW) or {})
                total = weights.pop("~sum", 0)
                found = ([(int(s), m) for s, m in found.items], total, weights)
            elif key == CONC:
                found = sorted(m for _, m in found.items)
            else:
                found = [int(s) for s, _ in found.items]
        out[key] = (found, store.ttl(key))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_natives_answer_and_hold_what_the_twin_does(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    native, twin = MemoryStore(clock), MemoryStore(clock)
    held: list[str] = []
    for step in range(400):
        clock.advance(rng.choice((0.0, 0.0, 0.001, 0.5, 3.0, 20.0, 61.5)) if rng.random() < 0.7 else 0.0)
        again = bool(held) and rng.random() < 0.05
        token = rng.choice(held) if again else f"r{step}"  # a slot or a reservation taken again
        entries, force = _entries(rng, again), rng.random() < 0.1
        now = clock.time() - (rng.choice((0.002, 1.5)) if rng.random() < 0.1 else 0.0)  # a wall clock set back
        got = acquire_unleased(native, token, force, WINDOW_US, entries, now)
        want = acquire_entries(twin, token, force, WINDOW_US, None, entries, now)
        assert got == want, (step, entries)
        if got[0] and any(kind == "C" for kind, *_ in entries):
            held.append(token)
        if held and rng.random() < 0.45:  # a completion: its slot goes, its reservation settles
            done = held.pop(rng.randrange(len(held)))
            actual = rng.choice((0, 10, 50))
            for store in (native, twin):
                release_slot(store, CONC, done)
                settle(store, TPM, TPMW, done, actual)
        assert _view(native) == _view(twin), step


def test_the_native_structures_take_the_place_of_the_sorted_sets() -> None:
    store = MemoryStore(FakeClock())
    entries = [("R", 5, 1, RPM, ""), ("C", 2, 1, CONC, ""), ("T", 100, 40, TPM, TPMW)]
    assert acquire_unleased(store, "a", False, WINDOW_US, entries, 1000.0)[0] == 1
    assert isinstance(store.get(RPM), RequestLog) and store.get(CONC) == {"a"}
    assert isinstance(store.get(TPM), TokenLog) and store.get(TPMW) is None  # the weights live in the log
    assert store.ttl(RPM) == pytest.approx(61) and store.ttl(TPM) == pytest.approx(61) and store.ttl(CONC) is None
    release_slot(store, CONC, "a")
    assert store.get(CONC) is None  # the emptied set goes, as in Redis


async def test_twin_and_natives_read_each_others_logs_on_one_store() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    take = ["R", 3, 1, "C", 2, 1, "T", 100, 30]
    keys = [RPM, CONC, TPM, TPMW]
    args = ["0", WINDOW_US, LEASE_US]
    native = [("R", 3, 1, RPM, ""), ("C", 2, 1, CONC, ""), ("T", 100, 30, TPM, TPMW)]
    assert acquire_unleased(backend.store, "n1", False, WINDOW_US, native, clock.time())[:2] == [1, 0]
    clock.advance(1)
    twin = await backend.run(ACQUIRE, keys, ["t1", *args, *take])  # reads the native logs as sorted sets
    assert twin[0] == 1 and twin[2::3] == [2, 2, 60]
    clock.advance(1)
    again = acquire_unleased(backend.store, "n2", False, WINDOW_US, native, clock.time())  # a twin's sets now
    assert again[0] == 0 and again[2::3] == [2, 2, 60] and again[4::3] == [0, 1, 0]


def _pair() -> tuple[FakeClock, MemoryStore, MemoryStore]:
    clock = FakeClock()
    return clock, MemoryStore(clock), MemoryStore(clock)


def _both(native: MemoryStore, twin: MemoryStore, token: str, entries: list, now: float) -> list[int]:
    got = acquire_unleased(native, token, False, WINDOW_US, entries, now)
    assert got == acquire_entries(twin, token, False, WINDOW_US, None, entries, now)
    assert _view(native) == _view(twin)
    return got


ADMIT = [("R", 6, 1, RPM, ""), ("C", 3, 1, CONC, ""), ("T", 120, 30, TPM, TPMW)]


def test_what_the_fast_check_hands_to_the_general_one_answers_as_the_twin() -> None:
    """An expired key, another kind of value, a log a trim empties, an emptied slot set, an entry over
    its limit: the fast check leaves each to the general one, and the answer is the twin's."""
    clock, native, twin = _pair()
    _both(native, twin, "a", ADMIT, clock.time())
    clock.advance(61.5)  # RPM and TPM past their expiry, not swept yet
    _both(native, twin, "b", ADMIT, clock.time())
    clock.advance(30)
    for store in (native, twin):
        store.set(RPM2, "text")  # another kind of value: replaced
        store.data[CONC] = set()  # an emptied slot set left behind: deleted
    _both(native, twin, "c", [("R", 9, 1, RPM2, ""), ("C", 3, 1, CONC, ""), *ADMIT[2:]], clock.time())
    clock.advance(31)  # "b"'s entries have left the window: the trims empty RPM and TPM
    _both(native, twin, "d", ADMIT, clock.time())
    _both(native, twin, "e", [("R", 1, 1, RPM, ""), *ADMIT[1:]], clock.time())  # over: refused, nothing written
    assert native.get(CONC) == {"c", "d"}  # the set that replaced the emptied one


def test_one_key_named_twice_is_read_once_by_every_entry() -> None:
    """Entries on one key share its log, new or stored, and are all checked before any is taken."""
    store = MemoryStore(FakeClock())
    twice = [("R", 2, 1, RPM, ""), ("R", 2, 1, RPM, "")]
    assert acquire_unleased(store, "a", False, WINDOW_US, twice, 1000.0) == [1, 0, 1, 60000, 0, 1, 60000, 0]
    assert store.get(RPM).times == [1_000_000_000, 1_000_000_000]  # one new log, taken twice
    assert acquire_unleased(store, "b", False, WINDOW_US, twice, 1000.0) == [0, 60000, 2, 60000, 1, 2, 60000, 1]
    peek = [("T", 100, 30, TPM, TPMW), ("P", 100, 1, TPM, TPMW)]
    assert acquire_unleased(store, "c", False, WINDOW_US, peek, 1000.0) == [1, 0, 30, 60000, 0, 0, 60000, 0]
    assert acquire_unleased(store, "d", False, WINDOW_US, peek, 1000.0) == [1, 0, 60, 60000, 0, 30, 60000, 0]
    slots = [("C", 2, 1, CONC, ""), ("C", 2, 1, CONC, "")]
    assert acquire_unleased(store, "e", False, WINDOW_US, slots, 1000.0) == [1, 0, 1, 0, 0, 1, 0, 0]
    assert acquire_unleased(store, "f", False, WINDOW_US, slots, 1000.0) == [1, 0, 2, 0, 0, 2, 0, 0]
    assert store.get(CONC) == {"e", "f"}


def test_a_taken_log_s_expiry_moves_as_expire_moves_it() -> None:
    """Taking a stored log pushes its deadline forward in place (no heap entry); a new one is queued."""
    clock = FakeClock()
    store = MemoryStore(clock)
    acquire_unleased(store, "a", False, WINDOW_US, ADMIT, clock.time())
    queued = dict(store._queued)
    assert store.deadlines[RPM] == store.deadlines[TPM] == queued[RPM] == clock.monotonic() + 61
    clock.advance(5)
    acquire_unleased(store, "b", False, WINDOW_US, ADMIT, clock.time())
    assert store.deadlines[RPM] == store.deadlines[TPM] == clock.monotonic() + 61
    assert store._queued == queued and len(store._heap) == 2  # the sweep requeues them when due


def test_a_log_the_check_empties_is_shared_by_the_entries_after_it() -> None:
    """A peek whose trim empties its key's log, then a take on that key: the take reuses that very log
    (a native log again, not a twin's sorted set), as when both read it in one pass."""
    clock = FakeClock()
    store = MemoryStore(clock)
    acquire_unleased(store, "a", False, WINDOW_US, [("T", 100, 10, TPM, TPMW)], clock.time())
    clock.advance(60.5)  # out of the window, not yet expired
    both = [("P", 100, 1, TPM, TPMW), ("T", 100, 10, TPM, TPMW)]
    assert acquire_unleased(store, "b", False, WINDOW_US, both, clock.time()) == [1, 0, 0, 60000, 0, 10, 60000, 0]
    assert type(store.get(TPM)) is TokenLog and store.get(TPMW) is None
