"""Narrow, never widen: a team within its tenant, a key within its team (or tenant), and the
request identity (``Tenant``, ``ApiKey``) a managed key runs as, so the existing rate-limit and
budget stages apply its limits unchanged (the tightest along tenant -> team -> key)."""

from __future__ import annotations

from dataclasses import replace

from gateway.errors import invalid
from gateway.keys.model import LIMIT_FIELDS, KeyRecord, Limits, TeamRecord
from gateway.policy.model import ApiKey, BudgetPolicy, LimitSet, Tenant


def tightest(own: LimitSet | None, parent: LimitSet | None) -> LimitSet | None:
    """Field by field, the smaller of two limit sets (a missing field is no limit)."""
    if own is None or parent is None:
        return own or parent
    pairs = ((getattr(own, f), getattr(parent, f)) for f in LIMIT_FIELDS)
    return LimitSet(*(a if b is None else b if a is None else min(a, b) for a, b in pairs))


def parent_of(tenant: Tenant, team: TeamRecord | None) -> tuple[str, Limits]:
    """What a child is checked against: a label and the parent's effective limits."""
    rl = tenant.rate_limit.tenant_limits
    base = Limits(tenant.models, None if rl.empty else rl, tenant.budget)
    if team is None:
        return f"tenant '{tenant.name}'", base
    own = team.limits
    return f"team '{team.name}'", Limits(
        own.models if own.models is not None else base.models,
        tightest(own.rate_limit, base.rate_limit),
        own.budget if own.budget is not None else base.budget,
    )


# A child's budget period must nest in its parent's: each of its windows lies inside one of the parent's.
# ISO weeks cross month ends, so a weekly budget nests in neither a monthly nor a daily one; ``total``
# never resets and so holds every period.
NESTS_IN = {"daily": ("daily", "weekly", "monthly", "total"), "weekly": ("weekly", "total"),
            "monthly": ("monthly", "total"), "total": ("total",)}


def check_narrows(child: Limits, tenant: Tenant, team: TeamRecord | None) -> None:
    """A 400 naming the first field of ``child`` that would widen its parent."""
    label, parent = parent_of(tenant, team)
    allowed = parent.models or ()
    for model in child.models or ():
        if model not in allowed:
            raise invalid(f"'models': {label} has no model '{model}'; a key or team may only narrow "
                          f"its parent's models ({', '.join(allowed) or 'none'}).", "models")
    if child.rate_limit is not None and parent.rate_limit is not None:
        for name in LIMIT_FIELDS:
            mine, theirs = getattr(child.rate_limit, name), getattr(parent.rate_limit, name)
            if mine is not None and theirs is not None and mine > theirs:
                raise invalid(f"'rate_limit.{name}' {mine} is above the {theirs} of {label}.", f"rate_limit.{name}")
    if child.budget is not None and parent.budget is not None:
        mine_b, theirs_b = child.budget, parent.budget
        if mine_b.usd > theirs_b.usd:
            raise invalid(f"'budget.usd' {mine_b.usd:g} is above the {theirs_b.usd:g} of {label}.", "budget.usd")
        if theirs_b.period not in NESTS_IN[mine_b.period]:
            fits = [p for p, outer in NESTS_IN.items() if theirs_b.period in outer]
            raise invalid(f"'budget.period' {mine_b.period} does not nest in the {theirs_b.period} budget of "
                          f"{label} (allowed: {', '.join(fits)}).", "budget.period")


def identity(tenant: Tenant, key: KeyRecord, team: TeamRecord | None) -> tuple[Tenant, ApiKey]:
    """The tenant (its models narrowed) and the per-request key a managed key runs as."""
    _, parent = parent_of(tenant, team)
    mine, theirs = key.limits.models, parent.models or ()
    allowed = tuple(m for m in tenant.models if m in theirs and (mine is None or m in mine))  # never past a parent
    scoped = tenant if allowed == tenant.models else replace(tenant, models=allowed)
    team_budget: BudgetPolicy | None = team.limits.budget if team is not None else None
    api_key = ApiKey(
        digest=key.digest,
        name=key.id,
        rate_limit=tightest(key.limits.rate_limit, tenant.rate_limit.per_key),
        budget=key.limits.budget,
        team=team.id if team is not None else "",
        team_rate_limit=team.limits.rate_limit if team is not None else None,
        team_budget=team_budget,
        managed=True,
        expires_at=key.expires_at,
    )
    return scoped, api_key
