"""Managed teams' and keys' budgets for ``GET /admin/budgets``: their limits and current-period spend,
read from the same ledger scopes the budget stage charges (``g|<team id>``, ``k|<key id>``).

Keys are paged (``limit`` from ``after``, in id order) since a tenant may have many; teams are all
shown. Revoked keys are left out; no secret or digest is ever part of an entry.
"""

from __future__ import annotations

from typing import Any

from gateway.budget import report
from gateway.budget.service import BudgetService
from gateway.keys.model import LIMIT_FIELDS, Limits
from gateway.keys.store import KeyStore


def _rate_limit(limits: Limits) -> dict[str, int | None] | None:
    rl = limits.rate_limit
    return None if rl is None else {k: getattr(rl, k) for k in LIMIT_FIELDS}


async def managed_budgets(service: BudgetService, store: KeyStore, tenant: str, after: str, limit: int,
                          now: float) -> dict[str, Any]:
    """``{"teams", "managed_keys", "managed_keys_next"}`` of one tenant (one ledger read)."""
    teams = await store.teams(tenant)
    keys, more = await store.keys_page(tenant, None, after, limit)
    live = [k for k in keys if k.revoked_at is None]
    scopes = [(f"g|{t.id}", t.limits.budget) for t in teams if t.limits.budget is not None]
    scopes += [(f"k|{k.id}", k.limits.budget) for k in live if k.limits.budget is not None]
    entries = dict(zip([s for s, _ in scopes], await report.scope_budgets(service, tenant, scopes, now), strict=True))
    return {
        "teams": {t.id: {"name": t.name, "budget": entries.get(f"g|{t.id}"),
                         "rate_limit": _rate_limit(t.limits)} for t in teams},
        "managed_keys": {k.id: {"name": k.name, "team": k.team, "budget": entries.get(f"k|{k.id}"),
                                "rate_limit": _rate_limit(k.limits)} for k in live},
        "managed_keys_next": keys[-1].id if more and keys else None,
    }
