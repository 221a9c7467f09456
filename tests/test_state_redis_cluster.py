"""The Redis Cluster backend against a real 3-master cluster on loopback.

Tenants are picked so their ``{tenant}`` hash tags land on every master, then rate-limit windows,
budget reservations, cache entries and the dead-letter log are driven through ``StateBackend``
exactly as the stages drive them: each call must reach the node owning its slot (no MOVED storm,
no CROSSSLOT), batches go to one node each, and a dead master fails only the calls for its slots.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from gateway.budget.ledger import Charge, Ledger, ScopeArgs, day_key, scope_key
from gateway.cache.key import cache_key
from gateway.clock import FakeClock
from gateway.policy.loader import load_policy_text
from gateway.policy.model import StatePolicy
from gateway.ratelimit.plan import build_plan
from gateway.ratelimit.scripts import ACQUIRE, RELEASE
from gateway.routing.rollout_store import RolloutStore
from gateway.state import RedisClusterBackend, Script, StateError, build_backend
from gateway.state.base import hash_tag
from gateway.state.redis_pack import PackedConnection
from tests.support.redis_cluster import LocalCluster, Node, started_cluster, tenants_on_every_master

INCR_ALL = Script(
    name="incr_all",
    lua="local out = {} for i, k in ipairs(KEYS) do out[i] = redis.call('INCRBY', k, ARGV[i]) end return out",
    local=lambda *_: None,
)


def spread_tenants(cluster: LocalCluster, per_master: int = 2) -> list[str]:
    return tenants_on_every_master(cluster, per_master)


def policy_for(tenants: list[str], rpm: int) -> Any:
    blocks = "".join(f"  {t}:\n    api_keys: [sk-{t}]\n    models: [small]\n    rate_limit: {{rpm: {rpm}}}\n"
                     for t in tenants)
    return load_policy_text(
        "version: 1\nproviders:\n  up: {type: mock}\nmodels:\n  small:\n    price: {input: 1, output: 1}\n"
        f"    deployments: [{{provider: up, model: m}}]\ntenants:\n{blocks}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One cluster for the tests that leave it whole (each starts from empty masters)."""
    c = started_cluster()
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_750_000_000.0)


@pytest.fixture
async def backend(cluster: LocalCluster, clock: FakeClock) -> AsyncIterator[RedisClusterBackend]:
    cluster.flushall()
    b = RedisClusterBackend(cluster.url, timeout_ms=3000, clock=clock)
    yield b
    await b.close()


def test_the_tenants_keys_span_every_master(cluster: LocalCluster) -> None:
    tenants = spread_tenants(cluster)
    owners = {cluster.owner(hash_tag("gw", t)).name for t in tenants}
    assert len(cluster.masters()) == 3 and owners == {n.name for n in cluster.masters()}


async def test_rollout_state_runs_on_the_cluster(cluster, backend) -> None:
    """Every rollout script's keys share the model's slot: each call is one script on its owner."""
    store = RolloutStore(backend, "gw")
    models = [f"bot-{i}" for i in range(6)]
    assert len({cluster.owner(store.keys(m)["state"]).name for m in models}) > 1  # spread over masters
    for m in models:
        assert (await store.sync(m, "fp")).epoch == 1
        assert (await store.trip(m, 1)).tripped
        assert (await store.charge(m, "r1", 5)).spent_pico == 5
        assert (await store.charge(m, "r1", 5)).spent_pico == 5
        assert await store.add(m, {"candidate:n": 1}) == {"candidate:n": 1}
        await store.push_pair(m, {"request_id": "r1"})
        assert [p["request_id"] for p in await store.pairs(m)] == ["r1"]
        assert (await store.reset(m)).epoch == 2


async def test_rate_limit_windows_are_exact_on_every_master(cluster, backend, clock) -> None:
    tenants = spread_tenants(cluster)
    policy = policy_for(tenants, rpm=5)
    plans = {t: build_plan(policy, policy.tenants[t], None, "small") for t in tenants}

    async def burst(n: int) -> dict[str, int]:
        async def one(t: str, i: int) -> int:
            plan = plans[t]
            reply = await backend.run(ACQUIRE, plan.acquire_keys, plan.acquire_args(f"{t}.{i}.{clock.time()}", False))
            return reply[0]
        results = await asyncio.gather(*(one(t, i) for t in tenants for i in range(n)))
        return {t: sum(results[k * n:(k + 1) * n]) for k, t in enumerate(tenants)}

    assert await burst(8) == dict.fromkeys(tenants, 5)  # 48 concurrent calls, 5 admitted per tenant
    clock.advance(59.999)
    assert await burst(3) == dict.fromkeys(tenants, 0)
    clock.advance(0.001)  # the first five leave the window together, to the millisecond
    assert await burst(8) == dict.fromkeys(tenants, 5)
    for t in tenants:  # every key is where its tenant's tag says, with a TTL
        key = plans[t].acquire_keys[0]
        owner = cluster.owner(key)
        assert owner.call("EXISTS", key) == 1 and owner.call("PTTL", key) > 0


async def test_concurrency_slots_are_taken_and_released_per_tenant(cluster, backend) -> None:
    tenants = spread_tenants(cluster, per_master=1)
    keys = {t: [f"{hash_tag('gw', t)}:rl:t:conc"] for t in tenants}
    args = ["0", 60_000_000, 30_000_000, "C", 2, 1]
    taken = await asyncio.gather(*(backend.run(ACQUIRE, keys[t], [f"{t}.{i}", *args]) for t in tenants for i in range(3)))
    assert [r[0] for r in taken] == [1, 1, 0] * len(tenants)
    await asyncio.gather(*(backend.run(RELEASE, keys[t], [f"{t}.0", "C", 0]) for t in tenants))
    again = await asyncio.gather(*(backend.run(ACQUIRE, keys[t], [f"{t}.9", *args]) for t in tenants))
    assert [r[0] for r in again] == [1] * len(tenants)


async def test_budget_reserve_and_settle_on_every_master(cluster, backend) -> None:
    tenants = spread_tenants(cluster)
    ledger = Ledger(backend)
    scopes = {t: ScopeArgs(scope_key("gw", t, "t", "2025-06"), 1000, None, True, False, 3_600_000) for t in tenants}

    async def reserve(t: str, i: int) -> str:
        return (await ledger.reserve([scopes[t]], f"{t}.{i}", 60, 300, None)).verdict

    verdicts = await asyncio.gather(*(reserve(t, i) for t in tenants for i in range(4)))
    assert verdicts == ["main", "main", "main", "over"] * len(tenants)  # 3 x 300 <= 1000 < 4 x 300
    for t in tenants:
        s = scopes[t]
        day = day_key("gw", t, "2025-06-15")
        charged = Charge(f"{t}.0", 120, (s.key,), (s.ttl_ms,), day, 86_400_000, (("small:usd", 120), ("small:n", 1)))
        assert await ledger.settle(charged) == [(120, 600)]
        [record, bucket] = await ledger.read([day, s.key])
        assert record == {"small:usd": 120, "small:n": 1} and (bucket["spent"], bucket["held"]) == (120, 600)


async def test_cache_entries_live_on_the_owner_of_their_tenant(cluster, backend) -> None:
    tenants = spread_tenants(cluster)
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    keys = {t: cache_key("gw", t, False, "chat", "small", body) for t in tenants}
    await asyncio.gather(*(backend.set(keys[t], t.encode(), ttl_s=60) for t in tenants))
    assert await asyncio.gather(*(backend.get(keys[t]) for t in tenants)) == [t.encode() for t in tenants]
    for t in tenants:
        assert cluster.owner(keys[t]).call("EXISTS", keys[t]) == 1
    assert await backend.delete(*keys.values()) == len(tenants)  # one DEL per slot
    assert await asyncio.gather(*(backend.get(keys[t]) for t in tenants)) == [None] * len(tenants)


async def test_set_many_writes_each_slots_keys_on_its_owner(cluster, backend) -> None:
    """Feedback records are batched per tenant; a batch spanning slots is split, one call per slot."""
    tenants = spread_tenants(cluster)
    items = [(f"{hash_tag('gw', t)}:req:{i}", f"{t}.{i}".encode(), 60.0) for t in tenants for i in range(3)]
    await backend.set_many(items[:3])  # one tenant: one script on its owner
    await backend.set_many(items)  # every master
    for key, value, _ in items:
        owner = cluster.owner(key)
        assert owner.call("GET", key) == value.decode() and 0 < owner.call("PTTL", key) <= 60_000


async def test_dead_letter_log_push_read_remove(cluster, backend) -> None:
    logs = ["gw:dlq", "gw:review", *(f"{hash_tag('gw', t)}:log" for t in spread_tenants(cluster, 1))]
    ids = await asyncio.gather(*(backend.log_append(k, {"n": i, "k": k}, 100) for k in logs for i in range(3)))
    assert all(len(set(ids[i:i + 3])) == 3 for i in range(0, len(ids), 3))  # ids are per log
    for k in logs:
        rows = await backend.log_range(k)
        assert [r for _, r in rows] == [{"n": i, "k": k} for i in range(3)]
        assert await backend.log_remove(k, [rows[0][0]]) == 1
        assert await backend.log_len(k) == 2
        assert [r["n"] for _, r in await backend.log_range(k, after=rows[1][0])] == [2]
    with pytest.raises(StateError, match="log full"):
        await backend.log_append("gw:dlq", {"n": 9}, 2)


async def test_each_pipeline_goes_to_one_node(cluster, backend) -> None:
    tenants = spread_tenants(cluster, per_master=3)
    sent: list[set[str]] = []
    execute = backend._pipe._execute

    async def counted(calls: list[Any], reload: bool = False) -> list[Any]:
        sent.append({cluster.owner(c.args[2] if c.method == "evalsha" else c.args[0]).name for c in calls})
        return await execute(calls, reload)

    keys = [f"{hash_tag('gw', t)}:n" for t in tenants]
    await asyncio.gather(*(backend.run(INCR_ALL, [k], [0]) for k in keys))  # layout read, scripts loaded
    backend._pipe._execute = counted  # type: ignore[method-assign]
    await asyncio.gather(*(backend.incr(k) for k in keys), *(backend.run(INCR_ALL, [k, k + ":2"], [1, 2]) for k in keys))
    assert len(sent) == 3 and all(len(owners) == 1 for owners in sent)  # one batch per master


async def test_keys_of_one_call_on_several_slots_are_refused_before_sending(backend) -> None:
    with pytest.raises(StateError, match="different cluster slots"):
        await backend.run(INCR_ALL, ["gw:{a}:x", "gw:{b}:x"], [1, 1])
    assert await backend.run(INCR_ALL, ["gw:{a}:x", "gw:{a}:y"], [1, 2]) == [1, 2]


async def test_scripts_reload_on_every_node_after_a_flush(cluster, backend) -> None:
    keys = [f"{hash_tag('gw', t)}:s" for t in spread_tenants(cluster, 1)]
    assert await asyncio.gather(*(backend.run(INCR_ALL, [k], [1]) for k in keys)) == [[1]] * 3
    for node in cluster.masters():
        node.call("SCRIPT FLUSH")
    assert await asyncio.gather(*(backend.run(INCR_ALL, [k], [1]) for k in keys)) == [[2]] * 3


async def test_moved_slots_are_followed(cluster, backend) -> None:
    key = f"{hash_tag('gw', 'moving')}:n"
    assert await backend.incr(key, 5) == 5
    source = cluster.owner(key)
    target = next(n for n in cluster.masters() if n is not source)
    slot = key_slot(key.encode())
    _migrate(source, target, slot)
    try:
        # mid-migration the key already lives on the target: the source answers ASK for it
        assert await backend.incr(key) == 6
        assert await backend.run(INCR_ALL, [key], [1]) == [7]
        assert (source.call("CLUSTER COUNTKEYSINSLOT", slot), target.call("CLUSTER COUNTKEYSINSLOT", slot)) == (0, 1)
        _assign(cluster, slot, target)
        assert cluster.owner(key) is target
        assert await backend.incr(key) == 8  # MOVED: redis-py patches its slot map and follows
        assert await backend.run(INCR_ALL, [key], [1]) == [9]
        assert backend._route(key) == target.name
    finally:  # give the slot back (a failed test may have left it mid-migration)
        if cluster.owner(key) is target:
            _migrate(target, source, slot)
        else:
            target.call("FLUSHALL")
        _assign(cluster, slot, source)


def _migrate(source: Node, target: Node, slot: int) -> None:
    """Start moving ``slot`` and move its keys; the slot stays the source's until ``_assign``."""
    target.call("CLUSTER SETSLOT", slot, "IMPORTING", source.node_id)
    source.call("CLUSTER SETSLOT", slot, "MIGRATING", target.node_id)
    while keys := source.call("CLUSTER GETKEYSINSLOT", slot, 100):
        source.call("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)


def _assign(cluster: LocalCluster, slot: int, owner: Node) -> None:
    for node in cluster.masters():
        node.call("CLUSTER SETSLOT", slot, "NODE", owner.node_id)
    cluster.wait_ok()


async def test_build_backend_picks_the_cluster_client(cluster) -> None:
    backend = build_backend(StatePolicy(backend="redis", redis_url=cluster.url, redis_cluster=True,
                                        timeout_ms=3000))  # the first call discovers the cluster: no race with a loaded machine
    try:
        assert isinstance(backend, RedisClusterBackend) and backend.kind == "redis"
        await backend.ping()
        await backend.set("gw:{x}:k", b"v")
        assert await backend.get("gw:{x}:k") == b"v"
    finally:
        await backend.close()


async def test_every_node_packs_commands_with_hiredis(cluster, backend) -> None:
    for tenant in spread_tenants(cluster, per_master=1):
        await backend.set(f"gw:{{{tenant}}}:k", b"v")
    nodes = backend._client.nodes_manager.nodes_cache.values()
    assert nodes and all(issubclass(n.connection_class, PackedConnection) for n in nodes)


# -- a cluster of its own: these tests kill nodes ------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    c = started_cluster()
    try:
        yield c
    finally:
        c.cleanup()


async def test_ping_checks_every_master(own_cluster: LocalCluster) -> None:
    backend = RedisClusterBackend(own_cluster.url, timeout_ms=2000)
    try:
        await backend.ping()
        down = own_cluster.nodes[2]  # not the URL's node: the client must ask it, not only the seed
        down.stop()
        started = time.monotonic()
        with pytest.raises(StateError) as info:
            await backend.ping()
        assert time.monotonic() - started < 1.0  # refused at once, not timed out
        assert down.name in str(info.value)
        down.start()
        own_cluster.wait_ok()
        deadline = time.monotonic() + 10
        while True:  # its connections are re-dialled on the next ping
            try:
                await backend.ping()
                break
            except StateError:
                assert time.monotonic() < deadline, "ping did not recover"
                await asyncio.sleep(0.1)
    finally:
        await backend.close()


async def test_a_dead_master_fails_only_the_calls_for_its_slots(own_cluster: LocalCluster) -> None:
    tenants = spread_tenants(own_cluster, per_master=1)
    keys = [f"{hash_tag('gw', t)}:n" for t in tenants]
    backend = RedisClusterBackend(own_cluster.url, timeout_ms=2000)
    try:
        assert await asyncio.gather(*(backend.incr(k) for k in keys)) == [1, 1, 1]
        dead = own_cluster.owner(keys[1])
        dead.stop()
        started = time.monotonic()
        results = await asyncio.gather(*(backend.incr(k) for k in keys), return_exceptions=True)
        assert time.monotonic() - started < 1.0  # refused at once, not timed out
        assert results[0] == 2 and results[2] == 2
        assert isinstance(results[1], StateError) and str(results[1]).startswith("redis incr: ")
    finally:
        await backend.close()


async def test_a_black_holed_master_costs_only_its_own_calls_a_timeout(own_cluster: LocalCluster) -> None:
    tenants = spread_tenants(own_cluster, per_master=1)
    keys = [f"{hash_tag('gw', t)}:n" for t in tenants]
    backend = RedisClusterBackend(own_cluster.url, timeout_ms=500)
    try:
        assert await asyncio.gather(*(backend.incr(k) for k in keys)) == [1, 1, 1]
        stuck = own_cluster.owner(keys[0])
        stuck.pause()
        try:
            others = asyncio.gather(backend.incr(keys[1]), backend.incr(keys[2]))
            started = time.monotonic()
            results = await asyncio.gather(backend.incr(keys[0]), backend.ping(), return_exceptions=True)
            elapsed = time.monotonic() - started
            assert await others == [2, 2]  # answered while the stuck master's batch waited
        finally:
            stuck.resume()
        assert 0.4 <= elapsed < 1.5
        assert isinstance(results[0], StateError) and str(results[0]) == "redis incr: no answer within 500 ms"
        assert isinstance(results[1], StateError) and f"{stuck.name} gave no answer within 500 ms" in str(results[1])
        value = await backend.incr(keys[0])  # 2 or 3: the timed-out INCR may or may not have run
        assert value == int(stuck.call("GET", keys[0]))  # but no late reply is mistaken for this one
    finally:
        await backend.close()


async def test_failover_to_a_replica_is_found_without_a_restart(own_cluster: LocalCluster) -> None:
    tenants = spread_tenants(own_cluster, per_master=1)
    key = f"{hash_tag('gw', tenants[2])}:n"
    master = own_cluster.owner(key)
    replica = own_cluster.add_replica(master)
    backend = RedisClusterBackend(own_cluster.url, timeout_ms=500)
    try:
        assert await backend.incr(key) == 1
        written = master.call("INFO", "replication")["master_repl_offset"]  # replication is asynchronous:
        deadline = time.monotonic() + 10  # wait until the replica holds the write
        while replica.call("INFO", "replication").get("slave_repl_offset", -1) < written:
            assert time.monotonic() < deadline, "the replica did not receive the write"
            await asyncio.sleep(0.05)
        master.stop()
        with pytest.raises(StateError):
            await backend.incr(key)
        own_cluster.wait_promoted(replica)
        assert own_cluster.owner(key) is replica
        deadline = time.monotonic() + 10
        while True:
            try:
                value = await backend.incr(key)
                break
            except StateError:
                assert time.monotonic() < deadline, "the backend did not find the promoted replica"
                await asyncio.sleep(0.1)
        assert value == 2
        await backend.ping()
    finally:
        await backend.close()
