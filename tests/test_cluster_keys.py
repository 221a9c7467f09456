"""Every multi-key call the gateway builds stays on one Redis Cluster slot (pure: no server needed).

A Lua script or a multi-key command may only touch keys of one slot on a cluster. The key builders
(``ratelimit.plan``, ``budget.ledger``/``service``, ``cache.key``, ``feedback``) put the tenant in a
``{hash tag}``; here the keys of a policy with every kind of scope (tenant, API key, model, tpm pairs,
concurrency, routed and virtual models, tenant and key budgets, the day record) are built the way the
stages build them and their slots compared with redis-py's own CRC16.
"""

from __future__ import annotations

from redis.crc import key_slot

from gateway.budget.ledger import Charge, day_key
from gateway.budget.service import BudgetService
from gateway.cache.key import cache_key
from gateway.clock import FakeClock
from gateway.observability.feedback import record_key
from gateway.policy.loader import load_policy_text
from gateway.ratelimit.fused import AdmitOp, ReleaseOp
from gateway.ratelimit.plan import build_plan, build_token_plan
from gateway.state import MemoryBackend
from gateway.state.base import hash_tag
from gateway.state.fused import redis_call as fused_call

POLICY = """\
version: 1
state: {backend: redis, redis_cluster: true, redis_url: "redis://127.0.0.1:7000", key_prefix: prod.gw}
providers:
  up: {type: mock}
models:
  small: {price: {input: 1, output: 1}, deployments: [{provider: up, model: s}]}
  large: {price: {input: 5, output: 5}, deployments: [{provider: up, model: l}]}
  auto: {route: {small: small, large: large, large_when: [{has_tools: true}]}}
tenants:
  acme.eu:
    api_keys: [sk-a, {key: sk-b, name: ops, rate_limit: {rpm: 5, tpm: 900}, budget: {usd: 5}}]
    models: "*"
    rate_limit:
      rpm: 100
      tpm: 10000
      concurrency: 4
      per_key: {concurrency: 2}
      models: {large: {rpm: 10, tpm: 2000, concurrency: 1}, auto: {tpm: 3000}}
    budget: {usd: 100, period: daily}
  beta:
    api_keys: [sk-c]
    models: [small]
    rate_limit: {rpm: 7, concurrency: 1}
"""


def _one_slot(keys: list[str]) -> int:
    slots = {key_slot(k.encode()) for k in keys}
    assert len(slots) == 1, keys
    return slots.pop()


def test_each_rate_limit_call_of_a_tenant_is_on_its_tenants_slot() -> None:
    policy = load_policy_text(POLICY)
    for tenant in policy.tenants.values():
        home = key_slot(hash_tag("prod.gw", tenant.name).encode())
        for key in (None, *tenant.api_keys):
            for model in tenant.models:
                plan = build_plan(policy, tenant, key, model)
                assert plan.acquire_keys, (tenant.name, model)
                assert _one_slot(plan.acquire_keys) == home
                if plan.token_keys:
                    assert _one_slot(plan.token_keys) == home
                for served in ("small", "large"):
                    tokens = build_token_plan(policy, tenant, key, model, served)
                    if tokens.token_keys:
                        assert _one_slot(tokens.token_keys) == home
                if plan.slot_keys:  # leases are renewed per tenant, in one call
                    assert _one_slot(list(plan.slot_keys)) == home


def test_budget_reserve_and_settle_keys_are_on_the_tenants_slot() -> None:
    policy = load_policy_text(POLICY)
    service = BudgetService(MemoryBackend())
    service.on_policy(policy)
    now = FakeClock(1_750_000_000.0).time()
    tenant = policy.tenants["acme.eu"]
    ops = next(k for k in tenant.api_keys if k.name == "ops")
    scopes = [service.scope_args(tenant.name, spec, now) for spec in service.specs(tenant, ops)]
    assert len(scopes) == 2  # the tenant's budget and the key's
    reserve = [k for s in scopes for k in (s.key, s.key + ":exp")]
    day = day_key("prod.gw", tenant.name, "2025-06-15")
    settled = Charge("r", 0, (), (), day, 0, ()).settled_key  # applied settle ids: idempotent replays
    settle = [*reserve, day, settled]
    assert settled == "prod.gw:{acme.eu}:settled"
    assert _one_slot(reserve) == _one_slot(settle) == key_slot(b"{acme.eu}")


def test_each_fused_call_of_a_request_is_on_its_tenants_slot() -> None:
    """admit's call (budget scopes, request limits, both token variants) and complete's (settle, release)."""
    policy = load_policy_text(POLICY)
    service = BudgetService(MemoryBackend())
    service.on_policy(policy)
    tenant = policy.tenants["acme.eu"]
    ops = next(k for k in tenant.api_keys if k.name == "ops")
    scopes = [service.scope_args(tenant.name, spec, 1_750_000_000.0) for spec in service.specs(tenant, ops)]
    plan = build_plan(policy, tenant, ops, "auto")
    variants = [[("T", lim.limit, 9, *lim.keys) for lim in build_token_plan(policy, tenant, ops, "auto", served).tokens]
                for served in ("large", "small")]
    requests = [(lim.kind, lim.limit, 1, lim.keys[0], "") for lim in plan.requests]
    admit = [service.reserve_op(scopes, "r", 5, 1), AdmitOp("r", False, requests + variants[0], variants[1], False)]
    charge = Charge("r", 3, tuple(s.key for s in scopes), (0, 0), day_key("prod.gw", tenant.name, "2025-06-15"), 0, ())
    complete = [service.settle_op(charge), ReleaseOp("r", plan.slot_keys, [lim.keys for lim in plan.tokens], 3)]
    for call in (admit, complete):
        _, keys, _ = fused_call(call)
        assert len(keys) > 4 and _one_slot(keys) == key_slot(b"{acme.eu}")


def test_cache_keys_spread_by_namespace() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    own = cache_key("prod.gw", "acme.eu", False, "chat", "small", body)
    shared = cache_key("prod.gw", "acme.eu", True, "chat", "small", body)
    assert own.startswith("prod.gw:{t.acme.eu}:cache:") and shared.startswith("prod.gw:{shared}:cache:")
    assert key_slot(own.encode()) == key_slot(b"t.acme.eu") != key_slot(shared.encode())


def test_feedback_records_of_a_tenant_are_on_its_slot() -> None:
    """A tenant's records go out together, one ``set_many`` (one script) per batch."""
    policy = load_policy_text(POLICY)
    for tenant in policy.tenants:
        keys = [record_key(policy, tenant, f"req-{i}") for i in range(50)]
        assert _one_slot(keys) == key_slot(hash_tag("prod.gw", tenant).encode())
