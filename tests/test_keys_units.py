"""The pure logic of managed keys (limits merge, narrowing, request identity) and the store on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.errors import GatewayError
from gateway.keys.limits import check_narrows, identity, tightest
from gateway.keys.model import KeyRecord, Limits, TeamRecord, key_from, parse_limits, stored_key
from gateway.keys.store import KeyStore, digest_of, new_id, new_secret
from gateway.policy.loader import load_policy_text
from gateway.policy.model import BudgetPolicy, LimitSet, RateLimitPolicy, Tenant
from gateway.ratelimit.plan import Plans
from gateway.state import MemoryBackend, RedisBackend
from tests.support.keys import keys_policy

TENANT = Tenant("acme", (), ("small", "large"), rate_limit=RateLimitPolicy(rpm=100, concurrency=10,
                                                                          per_key=LimitSet(rpm=50)),
                budget=BudgetPolicy(100.0))


def _key(**kw) -> KeyRecord:
    return KeyRecord(new_id("key"), "acme", "k", digest_of("s"), "sk-gw-abcd", **kw)


def test_tightest_takes_the_smaller_of_each_field():
    assert tightest(LimitSet(rpm=5, tpm=None), LimitSet(rpm=10, tpm=7)) == LimitSet(rpm=5, tpm=7)
    assert tightest(None, LimitSet(rpm=1)) == LimitSet(rpm=1)
    assert tightest(LimitSet(concurrency=2), None) == LimitSet(concurrency=2)


def test_narrowing_names_the_widening_field():
    check_narrows(Limits(("small",), LimitSet(rpm=100), BudgetPolicy(100.0)), TENANT, None)
    team = TeamRecord("team_1", "acme", "t", Limits(("small",), LimitSet(rpm=5), BudgetPolicy(1.0)))
    for child, field in ((Limits(models=("large",)), "models"), (Limits(rate_limit=LimitSet(rpm=6)), "rate_limit.rpm"),
                         (Limits(rate_limit=LimitSet(concurrency=11)), "rate_limit.concurrency"),
                         (Limits(budget=BudgetPolicy(2.0)), "budget.usd")):
        with pytest.raises(GatewayError) as err:
            check_narrows(child, TENANT, team)
        assert err.value.param == field


@pytest.mark.parametrize(("parent", "child", "nests"), [
    ("monthly", "daily", True), ("monthly", "monthly", True), ("monthly", "weekly", False),
    ("monthly", "total", False), ("weekly", "daily", True), ("weekly", "monthly", False),
    ("daily", "weekly", False), ("daily", "daily", True), ("total", "weekly", True), ("total", "monthly", True),
])
def test_a_budget_period_must_nest_in_its_parents(parent, child, nests):
    team = TeamRecord("team_1", "acme", "t", Limits(budget=BudgetPolicy(5.0, parent)))
    check = lambda: check_narrows(Limits(budget=BudgetPolicy(1.0, child)), TENANT, team)  # noqa: E731
    if nests:
        check()
        return
    with pytest.raises(GatewayError) as err:
        check()
    assert err.value.param == "budget.period" and f"{child} does not nest in the {parent} budget" in str(err.value)


def test_identity_is_the_tightest_path():
    team = TeamRecord("team_1", "acme", "t", Limits(("small",), LimitSet(rpm=20), BudgetPolicy(5.0)))
    tenant, key = identity(TENANT, _key(team="team_1", limits=Limits(rate_limit=LimitSet(rpm=80, tpm=9))), team)
    assert tenant.name == "acme" and tenant.models == ("small",)
    assert key.managed and key.team == "team_1" and key.rate_limit == LimitSet(rpm=50, tpm=9)  # per_key 50 < 80
    assert key.team_rate_limit == LimitSet(rpm=20) and key.team_budget == BudgetPolicy(5.0)
    assert identity(TENANT, _key(), None)[0] is TENANT


def test_bodies_and_records_round_trip():
    limits = parse_limits({"models": ["small"], "rate_limit": {"rpm": 3}, "budget": {"usd": 2}})
    assert limits == Limits(("small",), LimitSet(rpm=3), BudgetPolicy(2.0, "monthly"))
    assert parse_limits({"rate_limit": None}, limits).rate_limit is None
    record = _key(limits=limits, metadata={"a": 1}, expires_at=5.0)
    assert key_from(stored_key(record)) == record
    for body, field in (({"rate_limit": {"rpm": 0}}, "rate_limit.rpm"), ({"budget": {"usd": -1}}, "budget.usd"),
                        ({"models": "small"}, "models"), ({"budget": {"usd": 1, "period": "yearly"}}, "budget.period")):
        with pytest.raises(GatewayError) as err:
            parse_limits(body)
        assert err.value.param == field


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[KeyStore]:
    if request.param == "memory":
        backend: MemoryBackend | RedisBackend = MemoryBackend()
    else:
        backend = RedisBackend(request.getfixturevalue("redis_server").url, timeout_ms=1000)
    await backend.start()
    yield KeyStore(backend, "gw")
    await backend.close()


async def test_the_store_answers_alike_on_both_backends(store: KeyStore):
    keys = [_key() for _ in range(5)]
    for key in keys:
        await store.add_key(key)
    assert await store.by_digest(keys[0].digest) is not None and await store.by_digest(digest_of("nope")) is None
    first, more = await store.keys_page("acme", None, "", 3)
    rest, last = await store.keys_page("acme", None, first[-1].id, 3)
    assert more and not last and sorted(k.id for k in first + rest) == sorted(k.id for k in keys)
    assert [k.id for k in first + rest] == sorted(k.id for k in keys)
    old = keys[0]
    secret = new_secret()
    new = KeyRecord(old.id, old.tenant, old.name, digest_of(secret), secret[:10])
    await store.rotate(old, new, 0.3)
    assert (await store.by_digest(old.digest)).digest == new.digest  # the old secret, in its grace
    await asyncio.sleep(0.5)
    assert await store.by_digest(old.digest) is None
    await store.revoke(KeyRecord(new.id, "acme", "k", new.digest, new.prefix, revoked_at=1.0))
    assert await store.by_digest(new.digest) is None and (await store.key(new.id)).revoked_at == 1.0
    team = TeamRecord(new_id("team"), "acme", "t")
    await store.add_team(team)
    assert [t.id for t in await store.teams("acme")] == [team.id]
    await store.remove_team(team)
    assert await store.teams("acme") == [] and await store.team(team.id) is None


async def test_the_expiry_index_counts_usable_keys_within_the_window(store: KeyStore):
    now = 1_900_000_000.0
    for expires in (now - 5, now + 10, now + 20, now + 500, None):
        await store.add_key(_key(expires_at=expires))
    assert await store.expiry("acme", now, 60) == (2, now + 10)  # the past one and the keyless one do not count
    assert await store.expiry("beta", now, 60) == (0, None)
    first = _key(expires_at=now + 1)
    await store.add_key(first)
    assert await store.expiry("acme", now, 60) == (3, now + 1)
    await store.revoke(KeyRecord(first.id, "acme", "k", first.digest, first.prefix, expires_at=now + 1,
                                 revoked_at=now))
    assert await store.expiry("acme", now, 60) == (2, now + 10)


def test_the_plan_memo_is_bounded_and_keeps_the_recently_used():
    policy = load_policy_text(keys_policy("http://127.0.0.1:1/v1"), env={})
    tenant = policy.tenants["acme"]
    plans = Plans(policy, max_entries=3)
    keys = [identity(tenant, _key(limits=Limits(rate_limit=LimitSet(rpm=i + 1))), None)[1] for i in range(5)]
    first = plans.get(policy, tenant, keys[0], "small")
    second = plans.get(policy, tenant, keys[1], "small")
    plans.get(policy, tenant, keys[2], "small")
    assert plans.get(policy, tenant, keys[0], "small") is first  # a hit, and now the most recent
    for key in keys[3:]:  # two more: the two least recently used (keys 1 and 2) go, key 0 stays
        plans.get(policy, tenant, key, "small")
    assert len(plans._memo) == 3
    assert plans.get(policy, tenant, keys[0], "small") is first
    assert plans.get(policy, tenant, keys[1], "small") is not second  # it was evicted: built again
    for i in range(50):
        plans.tokens(policy, tenant, keys[i % 5], "small", "large" if i % 2 else "small")
    assert len(plans._tokens) == 3


async def test_prune_deletes_every_trace_of_a_tenant_on_both_backends(store: KeyStore):
    kept = _key()
    await store.add_key(kept)
    team = TeamRecord(new_id("team"), "gone", "t")
    await store.add_team(team)
    gone = [KeyRecord(new_id("key"), "gone", f"g{i}", digest_of(f"g{i}"), "sk-gw-gone", team=team.id,
                      expires_at=1_900_000_000.0) for i in range(3)]
    for key in gone:
        await store.add_key(key)
    assert sorted(await store.tenants()) == ["acme", "gone"]
    digests, teams = await store.prune_tenant("gone")
    assert sorted(digests) == sorted(k.digest for k in gone) and teams == 1
    assert await store.tenants() == ["acme"]
    assert all([await store.by_digest(k.digest) is None and await store.key(k.id) is None for k in gone])
    assert await store.team(team.id) is None and await store.expiry("gone", 0.0, 1e12) == (0, None)
    assert await store.by_digest(kept.digest) is not None
    assert await store.prune_tenant("gone") == ([], 0)  # again: nothing left, no error
