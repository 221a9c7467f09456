"""The rollout's shared-state scripts on both backends (memory twin and a real redis-server) alike:
a new block starts a new experiment, a trip of a reset epoch is ignored, a charge applies once per
id, arm sums add up, and the shadow pairs stay bounded and expire."""

# ruff: noqa: F811 - each test takes the imported fixture ``h`` by name
from __future__ import annotations

from redis.crc import key_slot

from gateway.routing.rollout_store import PAIRS_MAX, PAIRS_TTL_S, RolloutStore, Shared
from tests.test_state_backends import Harness, h  # noqa: F401 - the memory|redis fixture, reused


async def test_sync_trip_reset_and_a_changed_block(h: Harness) -> None:
    store = RolloutStore(h.backend, "gw")
    first = await store.sync("bot", "fp1")
    assert first == Shared(1, False, 0)
    assert await store.sync("bot", "fp1") == first  # the same block: nothing starts over
    assert await store.trip("bot", 0) == first  # a verdict of another epoch changes nothing
    assert await store.trip("bot", 1) == Shared(1, True, 0)
    assert await store.read("bot") == Shared(1, True, 0)
    assert await store.reset("bot") == Shared(2, False, 0)
    await store.trip("bot", 1)  # late verdict of the epoch before the reset
    assert await store.read("bot") == Shared(2, False, 0)
    await store.trip("bot", 2)
    await store.charge("bot", "c1", 5)
    await store.add("bot", {"candidate:n": 3})
    await store.push_pair("bot", {"request_id": "r1"})
    assert await store.sync("bot", "fp2") == Shared(3, False, 0)  # a changed block: a new experiment
    assert await store.add("bot", {}) == {}
    assert await store.pairs("bot") == []


async def test_a_charge_applies_once_per_id(h: Harness) -> None:
    store = RolloutStore(h.backend, "gw")
    await store.sync("echo", "fp")
    assert (await store.charge("echo", "r1-shadow", 700)).spent_pico == 700
    assert (await store.charge("echo", "r1-shadow", 700)).spent_pico == 700  # a replay of an unknown call
    assert (await store.charge("echo", "r2-shadow", 300)).spent_pico == 1000
    assert (await store.reset("echo")).spent_pico == 0


async def test_arm_sums_add_up(h: Harness) -> None:
    store = RolloutStore(h.backend, "gw")
    assert await store.add("bot", {"primary:n": 2, "candidate:n": 1}) == {"primary:n": 2, "candidate:n": 1}
    assert await store.add("bot", {"candidate:n": 4, "candidate:errors": 1}) == {
        "primary:n": 2, "candidate:n": 5, "candidate:errors": 1}


async def test_pairs_are_bounded_newest_first_and_expire(h: Harness) -> None:
    store = RolloutStore(h.backend, "gw")
    for i in range(PAIRS_MAX + 5):
        await store.push_pair("echo", {"request_id": f"r{i}", "similarity": 0.5})
    pairs = await store.pairs("echo")
    assert len(pairs) == PAIRS_MAX
    assert pairs[0]["request_id"] == f"r{PAIRS_MAX + 4}" and pairs[-1]["request_id"] == "r5"
    assert [p["request_id"] for p in await store.pairs("echo", 2)] == [f"r{PAIRS_MAX + 4}", f"r{PAIRS_MAX + 3}"]
    h.clock.advance(PAIRS_TTL_S + 1)  # memory; Redis: the key carries the TTL
    if h.server is None:
        assert await store.pairs("echo") == []
    else:
        ttl = await h.backend._client.pttl(store.keys("echo")["pairs"])  # noqa: SLF001
        assert 0 < ttl <= PAIRS_TTL_S * 1000


def test_every_key_of_a_rollout_is_on_one_cluster_slot() -> None:
    store = RolloutStore(None, "prod.gw")  # type: ignore[arg-type]
    for model in ("bot", "support-bot.v2", "a:b"):
        assert len({key_slot(k.encode()) for k in store.keys(model).values()}) == 1
