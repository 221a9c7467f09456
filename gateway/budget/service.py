"""The budget service: policy-derived budget state, the ledgers, and backend-failure handling.

Shared by the budget stage (reserve in ``admit``, settle in ``complete``), the admin API and the
metrics stage (``services.extras["budget"].snapshot()``). Everything derived from the policy
(pico-dollar limits, per-model rates, downgrade targets) is computed in ``on_policy``, never per
request; what a (tenant, key) reserves against (``plan``: scopes, keys, TTLs) once per period.

On a state backend failure, ``state.on_backend_error`` decides: ``allow`` admits without a
reservation, ``deny`` refuses, ``local`` reserves on this replica's own in-memory ledger, started
from the level it last saw on the shared one, with its share of what was left
(``gateway.budget.fallback``). Charges that could not reach the shared ledger (down, or a
timeout: "unknown") are kept in ``pending`` (``gateway.budget.journal``: this replica's journal file
once ``start`` opened it) and replayed oldest first when the backend answers again; settles are
idempotent, so replaying one that did apply changes nothing. Past ``state.journal_max`` pending
charges ``journal_full`` is True and the budget stage refuses new work unless the mode is ``allow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from gateway.budget.fallback import LocalFallback
from gateway.budget.journal import MemoryPending, Pending, SettleJournal
from gateway.budget.ledger import (
    Charge,
    Ledger,
    Reserved,
    ReserveOp,
    ScopeArgs,
    SettleOp,
    scope_key,
)
from gateway.budget.periods import Window, key_ttl_s, window
from gateway.budget.pricing import UNPRICED, Rates, pico, rates_for, usd
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.policy.model import ApiKey, BudgetPolicy, ModelSpec, Policy, Price, Tenant
from gateway.state.base import StateBackend, StateError
from gateway.state.memory import MemoryBackend

log = logging.getLogger("gateway.budget")

REPLAY_BATCH = 32  # replayed per round trip series, then the journal marks them done
REPLAY_EVERY_S = 0.5  # how often the replayer tries the shared ledger while charges are pending
HOLD_MARGIN_S = 60.0


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """One budget a request counts against, precomputed from the policy."""

    label: str  # for messages: "tenant 'acme'" or "API key 'ops' of tenant 'acme'"
    scope: str  # key part: "t" or "k|<key name>"
    policy: BudgetPolicy
    limit: int  # pico-dollars
    soft: int | None
    enforce: bool  # mode enforce (else shadow)
    downgrade: bool  # enforced, and past ``soft`` it downgrades


def _spec(label: str, scope: str, budget: BudgetPolicy) -> BudgetSpec:
    soft = None if budget.soft is None else pico(budget.usd * budget.soft)
    enforce = budget.mode == "enforce"
    return BudgetSpec(label, scope, budget, pico(budget.usd), soft, enforce, enforce and budget.on_soft == "downgrade")


@dataclass(frozen=True, slots=True)
class BudgetPlan:
    """The budgets of one (tenant, API key) in the current periods, and what a reservation and its
    settle send for them; valid while ``start <= now < end`` (the periods' common span)."""

    specs: tuple[BudgetSpec, ...]
    scopes: list[ScopeArgs]
    keys: tuple[str, ...]  # the scopes' ledger keys
    exp_keys: tuple[str, ...]  # their reservation expiries' keys
    ttls_ms: tuple[int, ...]
    hold_s: float  # how long a reservation lives (``Derived.hold_s``)
    downgrade: bool  # some scope may downgrade
    watched: bool  # some budget is in shadow mode or has a soft threshold: a reservation's levels say more than yes or no
    start: float
    end: float


NO_PLAN = BudgetPlan((), [], (), (), (), 0.0, False, False, -math.inf, math.inf)  # a request nothing was reserved for


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
        self.fallback = LocalFallback(self.local)
        self.counts: Counter[str] = Counter()  # backend_error, failure_mode_*, settle_failed, replayed...
        self.pending: Pending = MemoryPending()
        self.journal: SettleJournal | None = None
        self.derived: Derived | None = None
        self.policy: Policy | None = None
        self._windows: dict[str, Window] = {}
        self._scopes: dict[tuple[str, str], tuple[Window, ScopeArgs]] = {}  # (tenant, scope) -> this period's
        self._plans: dict[tuple[str, str | None], BudgetPlan] = {}  # (tenant, key with a budget) -> its plan
        self._managed: dict[tuple[str, str, BudgetPolicy], BudgetSpec] = {}  # managed keys' and teams' specs
        self._replaying = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def on_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.derived = derive(policy)
        self.shared.settled_ttl_ms = max(1, round(policy.state.settled_ids_ttl_s * 1000))
        self._scopes, self._plans = {}, {}

    # -- lookups ----------------------------------------------------------------------------------
    def specs(self, tenant: Tenant, api_key: ApiKey | None) -> list[BudgetSpec]:
        d = self.derived
        assert d is not None
        out = []
        if (spec := d.tenants.get(tenant.name)) is not None:
            out.append(spec)
        if api_key is not None and api_key.managed:
            return out + self._managed_specs(tenant, api_key)
        if api_key is not None and api_key.budget is not None and (spec := d.keys.get((tenant.name, api_key.name))):
            out.append(spec)
        return out

    def _managed_specs(self, tenant: Tenant, key: ApiKey) -> list[BudgetSpec]:
        """A managed key's team and key budgets (scopes ``g|<team>``, ``k|<key>``), built once per budget."""
        out = []
        for label, scope, budget in ((f"team '{key.team}' of tenant '{tenant.name}'", f"g|{key.team}", key.team_budget),
                                     (f"API key '{key.name}' of tenant '{tenant.name}'", f"k|{key.name}", key.budget)):
            if budget is None:
                continue
            spec = self._managed.get((tenant.name, scope, budget))
            if spec is None:
                if len(self._managed) > 100_000:
                    self._managed.clear()
                spec = self._managed[(tenant.name, scope, budget)] = _spec(label, scope, budget)
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
        if found is not None and (found[0] is model.price or found[0] == model.price):
            return found[1]
        return rates_for(model.price)

    def plan(self, tenant: Tenant, api_key: ApiKey | None, now: float) -> BudgetPlan:
        """``specs`` and their ``scope_args`` for ``now``, cached per (tenant, key) until a period ends
        (a managed key's budgets may change: its plan is built each time)."""
        if api_key is not None and api_key.managed:
            return self._plan(tenant, api_key, now)
        cache_key = (tenant.name, None if api_key is None or api_key.budget is None else api_key.name)
        found = self._plans.get(cache_key)
        if found is None or not found.start <= now < found.end:
            found = self._plans[cache_key] = self._plan(tenant, api_key, now)
        return found

    def _plan(self, tenant: Tenant, api_key: ApiKey | None, now: float) -> BudgetPlan:
        assert self.derived is not None
        specs = self.specs(tenant, api_key)
        scopes = [self.scope_args(tenant.name, spec, now) for spec in specs]
        windows = [self.window(spec.policy.period, now) for spec in specs]
        return BudgetPlan(
            specs=tuple(specs),
            scopes=scopes,
            keys=tuple(s.key for s in scopes),
            exp_keys=tuple(s.key + ":exp" for s in scopes),
            ttls_ms=tuple(s.ttl_ms for s in scopes),
            hold_s=self.derived.hold_s,
            downgrade=any(s.downgrade for s in specs),
            watched=any(not s.enforce or s.soft is not None for s in specs),
            start=max([w.start for w in windows], default=-math.inf),
            end=min([math.inf if w.end is None else w.end for w in windows], default=math.inf),
        )

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
        if cached is not None and cached[0] is current and cached[1].limit == spec.limit:  # a managed budget may change
            return cached[1]
        ttl = key_ttl_s(current, now)
        key = scope_key(self.derived.prefix, tenant, spec.scope, current.id)
        args = ScopeArgs(key, spec.limit, spec.soft, spec.enforce, spec.downgrade,
                         0 if ttl is None else max(1, round(ttl * 1000)))
        self._scopes[(tenant, spec.scope)] = (current, args)
        return args

    # -- reserve and settle -----------------------------------------------------------------------
    async def reserve(self, scopes: list[ScopeArgs], rid: str, main: int,
                      alt: int | None) -> tuple[Reserved | None, Ledger | None]:
        """Reserve on the shared ledger, or as ``on_backend_error`` says; raises StateError for deny."""
        assert self.derived is not None
        try:
            reserved = await self.shared.reserve(scopes, rid, self.derived.hold_s, main, alt)
        except StateError as exc:
            return await self.reserve_failed(exc, scopes, rid, main, alt)
        return self.reserved([s.key for s in scopes], reserved), self.shared

    def reserve_op(self, scopes: list[ScopeArgs], rid: str, main: int, alt: int | None,
                   exp_keys: Sequence[str] | None = None) -> ReserveOp:
        """``reserve``'s shared part as an op of the phase's fused call (``gateway.state.fused``)."""
        assert self.derived is not None
        return ReserveOp(scopes, rid, self.derived.hold_s, main, alt, exp_keys)

    def reserved(self, keys: Sequence[str], reserved: Reserved) -> Reserved:
        """A reservation the shared ledger answered for the scopes at ``keys``: its levels are what the
        local fallback starts from."""
        self.fallback.observe_levels(keys, reserved.levels)
        return reserved

    async def reserve_failed(self, exc: StateError, scopes: list[ScopeArgs], rid: str, main: int,
                             alt: int | None) -> tuple[Reserved | None, Ledger | None]:
        """The shared reservation failed: as ``on_backend_error`` says (raises StateError for deny)."""
        assert self.derived is not None
        self.counts["backend_error"] += 1
        mode = self.derived.on_error
        log.warning("budget reserve failed (%s); on_backend_error=%s", exc, mode)
        if mode == "deny":
            self.counts["failure_mode_denied"] += 1
            raise exc
        if mode == "allow":
            self.counts["failure_mode_allowed"] += 1
            return None, None
        self.counts["failure_mode_local"] += 1
        local = await self.fallback.reserve(scopes, rid, self.derived.hold_s, main, alt, self.derived.replicas)
        return local, self.local

    async def settle(self, charge: Charge, ledger: Ledger | None) -> None:
        """Settle on the ledger that holds the reservation; the shared ledger always gets the charge
        (the same id only releases a hold there if a reserve that timed out applied)."""
        if ledger is self.local:
            await self.local.settle(charge)
        try:
            answer = await self.shared.settle_once(charge)
        except StateError as exc:
            await self.settled(charge, None, exc)
            return
        await self.settled(charge, answer, None)

    def settle_op(self, charge: Charge, exp_keys: Sequence[str] | None = None,
                  settled: str | None = None) -> SettleOp:
        """``settle``'s shared part as an op of the phase's fused call (after the local ledger's part,
        when the reservation was held there); the keys it derives from ``charge`` may be given."""
        return SettleOp(charge, self.shared.settled_ttl_ms, exp_keys, settled)

    async def settled(self, charge: Charge, answer: tuple[bool, list[tuple[int, int]]] | None,
                      error: StateError | None) -> None:
        """The shared settle's answer (applied now, levels), or its failure: then kept for replay."""
        pending = self.settled_now(charge, answer, error)
        if pending is not None:
            await pending

    def settled_now(self, charge: Charge, answer: tuple[bool, list[tuple[int, int]]] | None,
                    error: StateError | None) -> Awaitable[None] | None:
        """``settled`` without a coroutine when nothing waits (no kept charges to replay): else the
        replay to await."""
        if error is not None:
            self.counts["settle_failed"] += 1
            self.keep(charge)
            log.warning("budget settle failed (%s); kept for replay (%d pending)", error, len(self.pending))
            return None
        assert answer is not None
        self._observe_settled(charge, *answer)
        if len(self.pending):  # the backend answers again: a batch now, the replayer does the rest
            return self._replay_now()
        return None

    async def _replay_now(self) -> None:
        await self.replay(batches=1)
        self._wake.set()

    def keep(self, charge: Charge) -> None:
        """Keep a charge for replay; past the bound it is lost, and counted."""
        if not self.pending.append(charge, self.clock.time()):
            self.counts["settle_dropped"] += 1
            log.error("budget: a charge of %d pico-dollars was dropped: the replay journal is full", charge.cost)

    @property
    def journal_full(self) -> bool:
        return self.pending.full

    async def replay(self, batches: int | None = None) -> None:
        """Replay kept charges oldest first until none is left, one fails, or ``batches`` are done."""
        if self._replaying:
            return  # one replayer at a time keeps the order
        self._replaying = True
        try:
            while len(self.pending) and (batches is None or batches > 0):
                batches = None if batches is None else batches - 1
                batch = self.pending.head(REPLAY_BATCH)
                for i, charge in enumerate(batch):
                    try:
                        await self._settle_shared(charge)
                    except StateError:
                        self.pending.done(i)
                        return
                    self.counts["settle_replayed"] += 1
                self.pending.done(len(batch))
        finally:
            self._replaying = False

    async def _settle_shared(self, charge: Charge) -> None:
        self._observe_settled(charge, *await self.shared.settle_once(charge))

    def _observe_settled(self, charge: Charge, applied: bool, levels: list[tuple[int, int]]) -> None:
        self.fallback.observe_levels(charge.scope_keys, levels)
        if not applied:  # its earlier attempt applied although its answer never came: nothing to do
            self.counts["settle_duplicate"] += 1

    # -- the journal ------------------------------------------------------------------------------
    async def start(self, folder: str, max_len: int) -> None:
        """Open this replica's journal (adopting what stopped replicas left) and start replaying."""
        journal = SettleJournal(folder, max_len)
        try:
            await asyncio.get_running_loop().run_in_executor(None, journal.open)
        except OSError as exc:  # serve anyway, as without Redis: kept in memory, lost on a restart
            self.counts["journal_unavailable"] += 1
            log.error("budget: settle journal in %s unavailable (%s); unrecorded charges are kept in memory "
                      "only", folder, exc)
            return
        for charge in self.pending.head(len(self.pending)):  # kept before the journal opened
            journal.append(charge, self.clock.time())
        self.journal = self.pending = journal
        self.counts["settle_adopted"] += journal.adopted
        self._tasks = [asyncio.create_task(journal.run_flusher()), asyncio.create_task(self._replayer())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.journal is not None:
            self.journal.close()  # what is left is taken over by the next replica that starts here
            self.journal, self.pending = None, MemoryPending()

    async def _replayer(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), REPLAY_EVERY_S)
            self._wake.clear()
            if len(self.pending):
                try:
                    await self.replay()
                except Exception:  # noqa: BLE001 - the replayer must outlive a bad round
                    log.exception("budget: replay round failed")

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
