"""What the admin API and ``gateway spend`` show: budgets and spend, read from the ledger.

One ledger read (one round trip) per tenant: budget hashes for ``budgets``, the tenant's day
records of the period for ``spend``. Amounts are given in USD and, exactly, in pico-dollars.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gateway.budget.ledger import day_key, scope_key
from gateway.budget.periods import Window, days, iso, previous
from gateway.budget.pricing import usd
from gateway.budget.service import BudgetService, BudgetSpec, _spec
from gateway.policy.model import BudgetPolicy, Policy, Tenant

PERIODS = ("current", "previous", "daily", "weekly", "monthly")


class ReportError(ValueError):
    """A bad query (unknown tenant or period); the message is shown to the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _budget_entry(spec: BudgetSpec, bucket: dict[str, int], current: Window) -> dict[str, Any]:
    spent, held = bucket.get("spent", 0), bucket.get("held", 0)
    remaining = max(0, spec.limit - spent)
    state = ("over" if spent + held >= spec.limit else
             "soft" if spec.soft is not None and spent + held >= spec.soft else "ok")
    b = spec.policy
    return {
        "usd": b.usd, "period": b.period, "soft": b.soft, "on_soft": b.on_soft, "mode": b.mode,
        "period_start": iso(current.start) if current.end is not None else None,
        "resets_at": current.resets_at,
        "spent_usd": usd(spent), "spent_picousd": spent,
        "reserved_usd": usd(held), "remaining_usd": usd(remaining),
        "remaining_ratio": remaining / spec.limit if spec.limit else 0.0,
        "state": state,
    }


async def budgets(service: BudgetService, now: float) -> dict[str, Any]:
    """Every budget of the policy with its current period's spend and reservations."""
    d, policy = service.derived, service.policy
    assert d is not None and policy is not None
    out: dict[str, Any] = {}
    for tenant in policy.tenants.values():
        specs = service.specs(tenant, None) + [d.keys[(tenant.name, k.name)] for k in tenant.api_keys
                                               if (tenant.name, k.name) in d.keys]
        if not specs:
            continue
        args = [service.scope_args(tenant.name, spec, now) for spec in specs]
        buckets = await service.shared.read([a.key for a in args])
        entry: dict[str, Any] = {"budget": None, "keys": {}}
        for spec, bucket in zip(specs, buckets, strict=True):
            shown = _budget_entry(spec, bucket, service.window(spec.policy.period, now))
            if spec.scope == "t":
                entry["budget"] = shown
            else:
                entry["keys"][spec.scope[2:]] = shown
        out[tenant.name] = entry
    return {"as_of": iso(now), "tenants": out, "unpriced_models": list(d.unpriced),
            "counters": dict(service.counts), "pending_replays": len(service.pending)}


async def scope_budgets(service: BudgetService, tenant: str, scopes: list[tuple[str, BudgetPolicy]],
                        now: float) -> list[dict[str, Any]]:
    """The current period of budgets outside the policy (managed teams ``g|<id>``, keys ``k|<id>``),
    in one ledger read, shaped like ``budgets``' entries."""
    assert service.derived is not None
    specs = [_spec(scope, scope, budget) for scope, budget in scopes]
    if not specs:
        return []
    windows = [service.window(spec.policy.period, now) for spec in specs]
    buckets = await service.shared.read([scope_key(service.derived.prefix, tenant, spec.scope, w.id)
                                         for spec, w in zip(specs, windows, strict=True)])
    return [_budget_entry(spec, bucket, w) for spec, bucket, w in zip(specs, buckets, windows, strict=True)]


def _window(service: BudgetService, tenant: Tenant, period: str, now: float) -> Window:
    if period not in PERIODS:
        raise ReportError(400, f"unknown period '{period}' (known: {', '.join(PERIODS)})")
    if period in ("current", "previous"):
        kind = tenant.budget.period if tenant.budget is not None else "monthly"
        current = service.window(kind, now)
        if period == "current":
            return current
        before = previous(current)
        if before is None:
            raise ReportError(400, f"tenant '{tenant.name}' has a total budget: there is no previous period")
        return before
    return service.window(period, now)


def _aggregate(records: dict[str, dict[str, int]], unpriced: tuple[str, ...]) -> dict[str, Any]:
    models: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    keys: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_day: dict[str, float] = {}
    for day, record in records.items():
        total = 0
        for name, amount in record.items():
            owner, _, metric = name.rpartition(":")
            if owner.startswith("k|"):
                keys[owner[2:]][metric] += amount
            else:
                models[owner][metric] += amount
                total += amount if metric == "usd" else 0
        if record:
            by_day[day] = usd(total)
    spent = sum(m["usd"] for m in models.values())
    return {
        "spent_usd": usd(spent), "spent_picousd": spent,
        "requests": sum(m["n"] for m in models.values()),
        "estimated_requests": sum(m["est"] for m in models.values()),
        "models": {name: {"spent_usd": usd(m["usd"]), "spent_picousd": m["usd"], "requests": m["n"],
                          "estimated_requests": m["est"], "prompt_tokens": m["in"], "completion_tokens": m["out"],
                          "cached_tokens": m["cached"], "reasoning_tokens": m["reasoning"],
                          "unpriced": name in unpriced} for name, m in sorted(models.items())},
        "keys": {name: {"spent_usd": usd(k["usd"]), "spent_picousd": k["usd"], "requests": k["n"]}
                 for name, k in sorted(keys.items())},
        "days": by_day,
        "unpriced_models": sorted(name for name in models if name in unpriced),
    }


async def spend(service: BudgetService, tenant_name: str | None, period: str, now: float) -> dict[str, Any]:
    """Spend per tenant, model, API key and day over one period (the budget's by default)."""
    d, policy = service.derived, service.policy
    assert d is not None and policy is not None
    tenants = _tenants(policy, tenant_name)
    out: dict[str, Any] = {}
    for tenant in tenants:
        shown = _window(service, tenant, period, now)
        names = days(shown, now)
        records = await service.shared.read([day_key(d.prefix, tenant.name, day) for day in names])
        out[tenant.name] = {
            "period": shown.kind, "which": period,
            "from": iso(shown.start) if shown.end is not None else None,
            "to": shown.resets_at,
            **_aggregate(dict(zip(names, records, strict=True)), d.unpriced),
        }
    return {"as_of": iso(now), "tenants": out}


def _tenants(policy: Policy, name: str | None) -> list[Tenant]:
    if not name:
        return list(policy.tenants.values())
    tenant = policy.tenants.get(name)
    if tenant is None:
        raise ReportError(404, f"unknown tenant '{name}' (known: {', '.join(policy.tenants)})")
    return [tenant]
