"""The budget service: policy-derived budget state, the ledgers, and backend-failure handling.

Shared by the budget stage (reserve in ``admit``, settle in ``complete``), the admin API and the
metrics stage (``services.extras["budget"].snapshot()``). Everything derived from the policy
(pico-dollar limits, per-model rates, downgrade targets) is computed in ``on_policy``, never per
request.

On a state backend failure, ``state.on_backend_error`` decides: ``allow`` admits without a
reservation, ``deny`` refuses, ``local`` reserves on this replica's own in-memory ledger with each
limit divided by ``state.replicas``. Charges that could not reach the shared ledger are kept
(bounded) and replayed after the next successful settle, so spend recorded during an outage is
not lost once the backend is back.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, replace

from gateway.budget.ledger import Charge, Ledger, Reserved, ScopeArgs, scope_key
from gateway.budget.periods import Window, key_ttl_s, window
from gateway.budget.pricing import UNPRICED, Rates, pico, rates_for, usd
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.policy.model import ApiKey, BudgetPolicy, ModelSpec, Policy, Price, Tenant
from gateway.state.base import StateBackend, StateError
from gateway.state.memory import MemoryBackend

log = logging.getLogger("gateway.budget")

MAX_PENDING = 10_000  # charges kept for replay while the shared ledger is unreachable
REPLAY_BATCH = 32  # replayed per successful settle
HOLD_MARGIN_S = 60.0


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """One budget a request counts against, precomputed from the policy."""

    label: str  # for messages: "tenant 'acme'" or "API key 'ops' of tenant 'acme'"
    scope: str  # key part: "t" or "k|<key name>"
    policy: BudgetPolicy
    limit: int  # pico-dollars
    soft: int | None

    @property
    def enforce(self) -> bool:
        return self.policy.mode == "enforce"

    @property
    def downgrade(self) -> bool:
        return self.enforce and self.policy.on_soft == "downgrade"


def _spec(label: str, scope: str, budget: BudgetPolicy) -> BudgetSpec:
    soft = None if budget.soft is None else pico(budget.usd * budget.soft)
    return BudgetSpec(label, scope, budget, pico(budget.usd), soft)


@dataclass(frozen=True, slots=True)
class Derived:
    """What a policy means for budgets, computed once per (re)load."""

    prefix: str
    on_error: str
    replicas: int
    hold_s: float  # a reservation outlives any request; then it expires (a crashed replica)
    rates: dict[str, tuple[Price | None, Rates]]  # served model name -> (its price, the rates of that price)
    small_of: dict[str, str]  # a route's large model -> its small model
    tenants: dict[str, BudgetSpec]
    keys: dict[tuple[str, str], BudgetSpec]
    unpriced: tuple[str, ...]


def derive(policy: Policy) -> Derived:
    served = {s.name: s for s in policy.models.values() if not s.is_virtual}
    small_of: dict[str, str] = {}
    for spec in policy.models.values():
        if spec.route is not None:
            small_of.setdefault(spec.route.large, spec.route.small)
    tenants = {t.name: _spec(f"tenant '{t.name}'", "t", t.budget) for t in policy.tenants.values() if t.budget}
    keys = {(t.name, k.name): _spec(f"API key '{k.name}' of tenant '{t.name}'", f"k|{k.name}", k.budget)
            for t in policy.tenants.values() for k in t.api_keys if k.budget}
    longest = max([p.timeouts.total_s for p in policy.providers.values()] + [policy.retry.deadline_s]
                  + [t.retry.deadline_s for t in policy.tenants.values()])
    return Derived(
        prefix=policy.state.key_prefix,
        on_error=policy.state.on_backend_error,
        replicas=max(1, policy.state.replicas),
        hold_s=longest + HOLD_MARGIN_S,
        rates={name: (spec.price, rates_for(spec.price)) for name, spec in served.items()},
        small_of=small_of,
        tenants=tenants,
        keys=keys,
        unpriced=tuple(sorted(name for name, spec in served.items() if spec.price is None)),
    )


class BudgetService:
    def __init__(self, backend: StateBackend, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.shared = Ledger(backend)
        self.local = Ledger(MemoryBackend(clock=clock))
        self.counts: Counter[str] = Counter()  # backend_error, failure_mode_*, settle_failed, replayed...
        self.pending: deque[Charge] = deque(maxlen=MAX_PENDING)
        self.derived: Derived | None = None
        self.policy: Policy | None = None
        self._windows: dict[str, Window] = {}
        self._scopes: dict[tuple[str, str], tuple[Window, ScopeArgs]] = {}  # (tenant, scope) -> this period's

    def on_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.derived = derive(policy)
        self._scopes = {}

    # -- lookups ----------------------------------------------------------------------------------
    def specs(self, tenant: Tenant, api_key: ApiKey | None) -> list[BudgetSpec]:
        d = self.derived
        assert d is not None
        out = []
        if (spec := d.tenants.get(tenant.name)) is not None:
            out.append(spec)
        if api_key is not None and api_key.budget is not None and (spec := d.keys.get((tenant.name, api_key.name))):
            out.append(spec)
        return out

    def rates(self, model: ModelSpec | None) -> Rates:
        """The rates of ``model`` as the policy it comes from prices it.

        A request admitted before a reload holds the old policy's ``ModelSpec``: it is reserved and
        settled at that price, even if the new policy changed or removed the model.
        """
        assert self.derived is not None
        if model is None:
            return UNPRICED
        found = self.derived.rates.get(model.name)
        if found is not None and found[0] == model.price:
            return found[1]
        return rates_for(model.price)

    def window(self, kind: str, now: float) -> Window:
        """The current window of ``kind``, cached until it ends."""
        cached = self._windows.get(kind)
        if cached is None or not cached.contains(now):
            cached = self._windows[kind] = window(kind, now)  # type: ignore[arg-type]
        return cached

    def scope_args(self, tenant: str, spec: BudgetSpec, now: float) -> ScopeArgs:
        """The reserve arguments of one scope, built once per period (the key TTL is from then on:
        it may outlive its due by up to one period, never fall short of it)."""
        assert self.derived is not None
        current = self.window(spec.policy.period, now)
        cached = self._scopes.get((tenant, spec.scope))
        if cached is not None and cached[0] is current:
            return cached[1]
        ttl = key_ttl_s(current, now)
        key = scope_key(self.derived.prefix, tenant, spec.scope, current.id)
        args = ScopeArgs(key, spec.limit, spec.soft, spec.enforce, spec.downgrade,
                         0 if ttl is None else max(1, round(ttl * 1000)))
        self._scopes[(tenant, spec.scope)] = (current, args)
        return args

    def day(self, now: float) -> str:
        """Today (UTC) as ``YYYY-MM-DD``, for day records."""
        return self.window("daily", now).id[1:]

    # -- reserve and settle -----------------------------------------------------------------------
    async def reserve(self, scopes: list[ScopeArgs], rid: str, main: int,
                      alt: int | None) -> tuple[Reserved | None, Ledger | None]:
        """Reserve on the shared ledger, or as ``on_backend_error`` says; raises StateError for deny."""
        assert self.derived is not None
        try:
            return await self.shared.reserve(scopes, rid, self.derived.hold_s, main, alt), self.shared
        except StateError as exc:
            self.counts["backend_error"] += 1
            mode = self.derived.on_error
            log.warning("budget reserve failed (%s); on_backend_error=%s", exc, mode)
            if mode == "deny":
                self.counts["failure_mode_denied"] += 1
                raise
            if mode == "allow":
                self.counts["failure_mode_allowed"] += 1
                return None, None
            self.counts["failure_mode_local"] += 1
            n = self.derived.replicas
            local = [replace(s, limit=s.limit // n, soft=None if s.soft is None else s.soft // n) for s in scopes]
            return await self.local.reserve(local, rid, self.derived.hold_s, main, alt), self.local

    async def settle(self, charge: Charge, ledger: Ledger | None) -> None:
        """Settle on the ledger that holds the reservation; the shared ledger always gets the charge."""
        if ledger is self.local:
            # the same id on the shared ledger: it releases a hold only if a reserve that timed out applied
            await self.local.settle(charge)
        try:
            await self._settle_shared(charge)
        except StateError as exc:
            self.counts["settle_failed"] += 1
            log.warning("budget settle failed (%s); kept for replay (%d pending)", exc, len(self.pending) + 1)
            if len(self.pending) == self.pending.maxlen:
                self.counts["settle_dropped"] += 1
            self.pending.append(charge)
            return
        await self.replay()

    async def replay(self) -> None:
        """Replay charges kept during an outage (a few per call, oldest first)."""
        for _ in range(REPLAY_BATCH):
            if not self.pending:
                return
            charge = self.pending.popleft()  # taken first: concurrent replays never settle one twice
            try:
                await self._settle_shared(charge)
            except StateError:
                self.pending.appendleft(charge)
                return
            self.counts["settle_replayed"] += 1

    async def _settle_shared(self, charge: Charge) -> None:
        applied, _ = await self.shared.settle_once(charge)
        if not applied:  # its earlier attempt applied although its answer never came: nothing to do
            self.counts["settle_duplicate"] += 1

    # -- read side --------------------------------------------------------------------------------
    async def snapshot(self) -> dict[str, dict[str, float]]:
        """Tenant -> {spent, limit, remaining_ratio} for the current period (for metrics gauges)."""
        d = self.derived
        if d is None:
            return {}
        now = self.clock.time()
        out: dict[str, dict[str, float]] = {}
        for tenant, spec in d.tenants.items():
            try:
                [bucket] = await self.shared.read([self.scope_args(tenant, spec, now).key])
            except StateError:
                continue
            spent = bucket.get("spent", 0)
            ratio = min(1.0, max(0.0, (spec.limit - spent) / spec.limit)) if spec.limit else 0.0
            out[tenant] = {"spent": usd(spent), "limit": spec.policy.usd, "remaining_ratio": ratio}
        return out
