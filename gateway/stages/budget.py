"""Cost budgets on the request path: reserve the worst case in ``admit``, settle the real cost in
``complete``.

``admit`` runs after ``route`` and only on a cache miss, so it sees the concrete model and a cache
hit costs nothing. It reserves the most the request can cost (prompt estimate plus ``max_tokens``,
else the model's output cap, else ``input.default_max_tokens``) against the tenant's budget and the
API key's, atomically with every other replica: a request that does not fit is refused (429
``insufficient_quota``, ``x-should-retry: false``), so concurrent requests never overshoot a hard
budget. Past the soft threshold ``warn`` adds ``x-gateway-budget-*`` headers and ``downgrade``
sends requests for a large or routed model to the route's small model (which is also tried before
refusing a request whose large-model reservation no longer fits). ``mode: shadow`` accounts and
counts but never refuses, downgrades or adds headers.

The reservation and the settle are ops of the phase's one fused call with the rate limits'
(``gateway.stages.state_batch``): a refusal by the limits undoes the reservation in that call. On
the memory backend a settle no other op joins (the limiter holds nothing for the request, e.g. a
tenant without limits) is that call by itself (``MemoryBackend.run_native``: no op or batch).

With a shared (Redis) state, a settle that cannot reach it goes to this replica's journal
(``gateway.budget.journal``) and is replayed when Redis answers; while the journal holds
``state.journal_max`` charges, ``admit`` refuses (503, ``retry-after``) rather than serve work it
could not charge, unless ``state.on_backend_error`` is ``allow``.

``complete`` settles exactly once per request: the cost of the provider's usage, or an estimate
(``estimated``) when none arrived, e.g. a stream cut or a client that left mid-way; nothing when
no model answered.
"""

from __future__ import annotations

import functools
import itertools
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.budget.ledger import (
    SETTLE_FRAGMENT,
    Charge,
    Ledger,
    Reserved,
    ReserveOp,
    SettleOp,
    day_key,
    parse_reserved,
    parse_settled,
    settle_now,
    settled_key,
)
from gateway.budget.periods import DAY_RECORD_TTL_S
from gateway.budget.pricing import PICO_PER_USD, Rates, cost, estimate_usage, usd, worst_case
from gateway.budget.service import NO_PLAN, BudgetPlan, BudgetSpec
from gateway.clock import time_of
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.pipeline import GatewayResponse, Respond, Stage, Verdict
from gateway.plan import Scope
from gateway.policy.model import ModelSpec
from gateway.state.base import StateError
from gateway.usage import Usage

if TYPE_CHECKING:
    from gateway.services import Services
    from gateway.stages.state_batch import StateBatch


class Hold(ReserveOp):
    """This request's reservation: ``pending`` while reserving (a cancelled reserve may have held).

    It is also the reservation's op of admit's fused call (a ``ReserveOp`` on its plan's scopes, for
    ``main`` or ``alt``): one object a request, not two.
    """

    __slots__ = ("amount", "ledger", "plan", "state")

    def __init__(self, rid: str, plan: BudgetPlan, main: int = 0, alt: int | None = None) -> None:
        ReserveOp.__init__(self, plan.scopes, rid, plan.hold_s, main, alt, plan.exp_keys)
        self.plan = plan
        self.state = "pending"  # pending | held | none (no reservation, still charged) | refused
        self.ledger: Ledger | None = None
        self.amount = 0


def output_tokens(ctx: RequestContext, model: ModelSpec) -> int:
    if ctx.endpoint == "embeddings":
        return 0
    return (ctx.max_tokens or model.max_output_tokens or ctx.policy.input.default_max_tokens) * ctx.choices


class BudgetStage(Stage):
    name = "budget"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.service = services.budget
        self._time = time_of(services.clock)
        # Reservation ids: only unique per ledger matters (replicas share it), so a random prefix per
        # process and a counter, instead of a uuid4 (an os.urandom call) per request.
        self._rid_prefix = secrets.token_hex(8) + "."
        self._seq = itertools.count()
        self._today_start = self._today_end = 0.0  # the UTC day ``_tenant_keys`` are for
        self._today = ""
        self._tenant_keys: dict[str, tuple[str, str]] = {}  # tenant -> (day record key, settled-ids key)
        self._day_fields_of: dict[tuple[str, str | None], tuple[Any, ...]] = {}  # (model, key) -> ``_day_names``
        # model name -> (the ``ModelSpec`` last priced, its rates): ``BudgetService.rates`` is a function of the
        # spec's price, so a request for the same spec (nearly all) reads it here without the call
        self._rates_of: dict[str, tuple[ModelSpec, Rates]] = {}
        # memory: a settle no other op joins runs as a call of its own (``MemoryBackend.run_native``, timed
        # and named by the metered wrapper as the fused call it replaces); None elsewhere
        sync_native = getattr(services.backend, "sync_native", None) if services.backend.kind == "memory" else None
        self._run: Callable[..., Any] | None = sync_native() if sync_native is not None else None

    def on_policy(self, policy: Any) -> None:
        self.service.on_policy(policy)
        self._today_end, self._tenant_keys, self._day_fields_of, self._rates_of = 0.0, {}, {}, {}

    def applies(self, scope: Scope) -> bool | frozenset[str]:
        """``admit`` only where a budget may apply (or a full settle journal may refuse); ``complete``
        (the spend record and ``ctx.cost_usd``) always."""
        t = scope.tenant
        if t is None or scope.managed or self.services.backend.kind != "memory" or t.budget is not None \
                or any(k.budget is not None for k in t.api_keys):
            return True
        return frozenset({"complete"})

    async def start(self) -> None:
        """Open the settle journal (read at start only: a reload does not move it)."""
        if self.services.backend.kind != "memory":
            state = self.services.holder.current.state
            await self.service.start(state.journal_dir, state.journal_max)

    async def stop(self) -> None:
        await self.service.stop()

    # -- admit ------------------------------------------------------------------------------------
    def admit(self, ctx: RequestContext) -> Verdict | Awaitable[Verdict]:
        """Plain on the usual path (the reservation rides the phase's fused call): no coroutine; a
        request without a state batch gets one that awaits its own reserve."""
        tenant, model = ctx.tenant, ctx.model
        if tenant is None or model is None:
            return None
        if self.service.pending.full and ctx.policy.state.on_backend_error != "allow":
            return self._journal_full(ctx)
        now = self._time()
        plan = self.service.plan(tenant, ctx.api_key, now)
        if not plan.specs:
            return None
        if model.route is not None:  # a routed model nobody resolved yet is reserved at its large model's price
            model = ctx.policy.models.get(model.route.large) or model
        small = self._small(ctx, model) if plan.downgrade else None
        main = worst_case(ctx.prompt_tokens_est, output_tokens(ctx, model), self._rates(model))
        alt = None if small is None else worst_case(ctx.prompt_tokens_est, output_tokens(ctx, small),
                                                    self._rates(small))
        hold = Hold(f"{self._rid_prefix}{next(self._seq)}", plan, main, alt)
        ctx.budget_hold = hold  # before the await: a cancelled reserve is still released
        batch = ctx.state_batch
        if batch is None:
            return self._admit_alone(ctx, hold, model, small, main, alt, now)
        # in admit's one call, before the token limits (which learn the downgrade)
        ctx.downgrade_to = small
        batch.add("admit", hold, functools.partial(self._reserved, ctx, hold, model, small, main, alt, now))
        return None

    async def _admit_alone(self, ctx: RequestContext, hold: Hold, model: ModelSpec, small: ModelSpec | None,
                           main: int, alt: int | None, now: float) -> Verdict:
        """Admit's reservation in a call of its own (no state batch)."""
        try:
            reserved, hold.ledger = await self.service.reserve(hold.plan.scopes, hold.rid, main, alt)
        except StateError:
            hold.state = "none"
            return self._deny(ctx)
        return self._held(ctx, hold, reserved, model, small, main, alt, now)

    def _reserved(self, ctx: RequestContext, hold: Hold, model: ModelSpec, small: ModelSpec | None,
                  main: int, alt: int | None, now: float, reply: list | None,
                  error: StateError | None) -> Verdict | Awaitable[Verdict]:
        """Admit's verdict from the fused call's reply, or (awaited) from ``on_backend_error`` when it failed."""
        if error is not None:
            return self._reserve_failed(ctx, hold, model, small, main, alt, now, error)
        assert reply is not None
        plan = hold.plan
        if reply[0] == "main" and len(reply) == 4 and not plan.watched and ctx.budget_outcome is None:
            # ``_held``'s common case (one enforced scope without a soft threshold, held at the main
            # price), read from the reply without a ``Reserved``: its level is what the fallback starts from
            self.service.fallback.observe(plan.keys[0], int(reply[2]) + int(reply[3]))
            hold.ledger, hold.state, hold.amount = self.service.shared, "held", main
            ctx.budget_outcome = "ok"
            self.service.counts["outcome_ok"] += 1
            return None
        reserved = self.service.reserved(plan.keys, parse_reserved(reply))
        hold.ledger = self.service.shared
        return self._held(ctx, hold, reserved, model, small, main, alt, now)

    async def _reserve_failed(self, ctx: RequestContext, hold: Hold, model: ModelSpec, small: ModelSpec | None,
                              main: int, alt: int | None, now: float, error: StateError) -> Verdict:
        try:
            reserved, hold.ledger = await self.service.reserve_failed(error, hold.plan.scopes, hold.rid, main, alt)
        except StateError:
            hold.state = "none"
            return self._deny(ctx)
        return self._held(ctx, hold, reserved, model, small, main, alt, now)

    def _held(self, ctx: RequestContext, hold: Hold, reserved: Reserved | None,
              model: ModelSpec, small: ModelSpec | None, main: int, alt: int | None, now: float) -> Verdict:
        """What a reservation (``None``: not reserved, allowed by ``on_backend_error``) means for the request."""
        if reserved is None:
            hold.state = "none"
            ctx.budget_outcome = "failure_mode_allowed"
            return None
        specs = hold.plan.specs
        if reserved.verdict == "over":
            hold.state = "refused"
            return self._refuse(ctx, specs[reserved.over - 1], reserved.levels[reserved.over - 1], main, now)
        hold.state = "held"
        hold.amount = main
        if reserved.verdict == "alt" and small is not None:
            hold.amount = alt or 0
            self._downgrade(ctx, model, small)
        self._outcome(ctx, hold.plan, reserved, hold.amount, now)
        return None

    def _small(self, ctx: RequestContext, model: ModelSpec) -> ModelSpec | None:
        """The small model this request may be downgraded to, if it fits the request."""
        name, via_route = _route_small(ctx)
        if name is None:
            assert self.service.derived is not None
            name = self.service.derived.small_of.get(model.name)
        spec = ctx.policy.models.get(name) if name else None
        if spec is None or spec.is_virtual or spec.name == model.name:
            return None
        if not via_route and ctx.tenant is not None and not ctx.tenant.may_use(spec.name):
            return None
        if spec.max_output_tokens is not None and (ctx.max_tokens or 0) > spec.max_output_tokens:
            return None
        window = spec.context_window
        if window is not None and ctx.prompt_tokens_est + (ctx.max_tokens or 0) > window:
            return None
        return spec

    @staticmethod
    def _downgrade(ctx: RequestContext, model: ModelSpec, small: ModelSpec) -> None:
        ctx.model, ctx.route = small, "small"
        ctx.response_headers["x-gateway-downgraded"] = "true"
        ctx.response_headers["x-gateway-downgraded-from"] = model.name
        ctx.response_headers["x-gateway-route"] = "small"
        ctx.budget_outcome = "downgraded"

    def _outcome(self, ctx: RequestContext, plan: BudgetPlan, reserved: Reserved, amount: int, now: float) -> None:
        soft = shadow_over = False
        if plan.watched:  # else enforced budgets without soft thresholds: the reservation said all
            for spec, (spent, held) in zip(plan.specs, reserved.levels, strict=True):
                level = spent + held
                if not spec.enforce:
                    shadow_over = shadow_over or level + amount > spec.limit
                elif spec.soft is not None and level >= spec.soft:
                    soft = True
                    self._warn_headers(ctx, spec, level, now)
        if ctx.budget_outcome != "downgraded":
            ctx.budget_outcome = "shadow_over_budget" if shadow_over else "soft" if soft else "ok"
        self.service.counts[_OUTCOME_COUNTS[ctx.budget_outcome]] += 1

    def _warn_headers(self, ctx: RequestContext, spec: BudgetSpec, level: int, now: float) -> None:
        """The tightest enforced budget past its soft threshold speaks in the headers."""
        remaining = max(0, spec.limit - level)
        shown = ctx.response_headers.get("x-gateway-budget-remaining")
        if shown is not None and float(shown) <= usd(remaining):
            return
        ctx.response_headers["x-gateway-budget-remaining"] = f"{usd(remaining):.6f}"
        ratio = remaining / spec.limit if spec.limit else 0.0
        ctx.response_headers["x-gateway-budget-remaining-ratio"] = f"{ratio:.4f}"
        ctx.response_headers["x-gateway-budget-scope"] = {"t": "tenant", "g": "team"}.get(spec.scope[0], "key")
        reset = self.service.window(spec.policy.period, now).resets_at
        if reset is not None:
            ctx.response_headers["x-gateway-budget-reset"] = reset

    def _refuse(self, ctx: RequestContext, spec: BudgetSpec, level: tuple[int, int], amount: int,
                now: float) -> Respond:
        ctx.budget_outcome = "over_budget"
        self.service.counts["outcome_over_budget"] += 1
        current = self.service.window(spec.policy.period, now)
        spent, held = level
        when = (f"it resets at {current.resets_at}" if current.end is not None
                else "it does not reset (period: total)")
        pending = f", ${usd(held):.6f} reserved by requests in flight" if held else ""
        msg = (f"Budget exceeded: {spec.label} has spent ${usd(spent):.6f}{pending} of its "
               f"${spec.policy.usd:g} {spec.policy.period} budget, and this request may cost up to "
               f"${usd(amount):.6f}; {when}.")
        headers = {"x-should-retry": "false"}
        if current.end is not None:
            headers["retry-after"] = str(max(1, int(current.end - now)))
        err = GatewayError(429, msg, code="insufficient_quota", type="insufficient_quota", headers=headers,
                           outcome="over_budget")
        return Respond(GatewayResponse.from_error(err), "over_budget")

    def _deny(self, ctx: RequestContext) -> Respond:
        ctx.budget_outcome = "failure_mode_denied"
        err = GatewayError(503, "Budget state is unavailable, so the request was refused "
                           "(state.on_backend_error: deny).", code="budget_unavailable",
                           headers={"retry-after": "1"}, outcome="failure_mode_denied")
        return Respond(GatewayResponse.from_error(err), "failure_mode_denied")

    def _journal_full(self, ctx: RequestContext) -> Respond:
        ctx.budget_outcome = "failure_mode_denied"
        self.service.counts["journal_full_refused"] += 1
        err = GatewayError(503, "Spend cannot be recorded: the state backend is unreachable and this replica's "
                           "journal of unrecorded charges is full (state.journal_max), so the request was "
                           "refused.", code="budget_unavailable", headers={"retry-after": str(JOURNAL_RETRY_S)},
                           outcome="failure_mode_denied")
        return Respond(GatewayResponse.from_error(err), "failure_mode_denied")

    # -- complete ---------------------------------------------------------------------------------
    def complete(self, ctx: RequestContext, error: BaseException | None) -> Awaitable[None] | None:
        """Plain on the usual path (the settle rides the phase's fused call, or on memory is that call
        alone): no coroutine; one that settles on its own (no state batch) or on the local ledger
        first is returned to be awaited."""
        if self.service.derived is None or ctx.tenant is None:
            return None
        hold = ctx.budget_hold
        if hold is not None and hold.state == "refused":
            return None
        usage, amount = self._charge(ctx)
        ctx.cost_usd = amount / PICO_PER_USD  # ``usd(amount)``, without its call
        if usage is None and hold is None:
            return None
        fields: tuple[tuple[str, int], ...] = ()
        if usage is not None and ctx.model is not None:
            fields = self._day_fields(ctx, ctx.model.name, usage, amount)
        now = self._time()
        keys = self._tenant_keys.get(ctx.tenant.name) if self._today_start <= now < self._today_end else None
        day, settled = keys or self._day_keys(ctx.tenant.name, now)  # built once per (tenant, day)
        if hold is None:  # no reservation (no budget applies, or admit never ran): the spend is still recorded
            rid, plan, ledger = f"{self._rid_prefix}{next(self._seq)}", NO_PLAN, None
        else:
            rid, plan, ledger = hold.rid, hold.plan, hold.ledger
        # by position, without the named tuple's Python-level ``__new__``; ``rid`` is the settle's id
        charge = _new_charge(Charge, (rid, amount, plan.keys, plan.ttls_ms, day, DAY_RECORD_TTL_MS if fields else 0,
                                      fields))
        batch = ctx.state_batch
        if batch is None:
            return self.service.settle(charge, ledger)
        run = self._run
        if run is not None and ctx.limit_state is None and ledger is not self.service.local:
            # nothing else joins ``complete``'s call (the limiter holds nothing for this request, and on
            # memory the feedback record stays in process): the settle is that call, with no op or batch
            try:
                reply = run(SETTLE_FRAGMENT.name, settle_now, charge, plan.exp_keys, settled,
                            self.service.shared.settled_ttl_ms)
            except StateError as exc:
                return self._settled(charge, None, exc)
            return self._settled(charge, reply, None)
        op = SettleOp(charge, self.service.shared.settled_ttl_ms, plan.exp_keys, settled)
        if ledger is self.service.local:  # ``BudgetService.settle``'s local part; the shared one goes in the call
            return self._settle_local_first(charge, batch, op)
        batch.add("complete", op, functools.partial(self._settled, charge))
        return None

    async def _settle_local_first(self, charge: Charge, batch: StateBatch, op: SettleOp) -> None:
        """A reservation held on the local ledger: settled there, then the shared settle joins the call."""
        await self.service.local.settle(charge)
        batch.add("complete", op, functools.partial(self._settled, charge))

    def _settled(self, charge: Charge, reply: list | None, error: StateError | None) -> Awaitable[None] | None:
        service = self.service
        if reply is not None and len(reply) <= 3 and not len(service.pending):
            # ``settled_now``'s common cases (one scope or none, nothing kept to replay) without ``parse_settled``
            if len(reply) == 3:
                service.fallback.observe(charge.scope_keys[0], int(reply[1]) + int(reply[2]))
            if reply[0] != "ok":
                service.counts["settle_duplicate"] += 1
            return None
        return service.settled_now(charge, None if reply is None else parse_settled(reply), error)

    def _charge(self, ctx: RequestContext) -> tuple[Usage | None, int]:
        """The usage to charge (estimated when the provider reported none) and its cost."""
        if ctx.cache_status in ("HIT", "STALE") or ctx.exhausted is not None:
            return None, 0  # answered from the cache, or a substitute when every deployment failed
        usage = ctx.usage
        if usage is None:
            if not _reached_model(ctx):
                return None, 0
            completion_chars = 0 if ctx.endpoint == "embeddings" else ctx.generated_chars
            usage = ctx.usage = estimate_usage(ctx.prompt_tokens_est, completion_chars)
        return usage, cost(usage, self._rates(ctx.model))

    def _rates(self, model: ModelSpec | None) -> Rates:
        """``BudgetService.rates``, kept per model name for the spec it was read from (``_rates_of``)."""
        found = None if model is None else self._rates_of.get(model.name)
        if found is not None and found[0] is model:
            return found[1]
        rates = self.service.rates(model)
        if model is not None:
            if len(self._rates_of) > 10_000:  # a model per name at a time: only reloads add names
                self._rates_of.clear()
            self._rates_of[model.name] = (model, rates)
        return rates

    def _day_keys(self, tenant: str, now: float) -> tuple[str, str]:
        """The tenant's day record key for ``now`` and its settled-ids key, built once per (tenant, day):
        the prefix only changes with the policy."""
        if not self._today_start <= now < self._today_end:
            today = self.service.window("daily", now)
            assert today.end is not None
            self._today_start, self._today_end, self._today, self._tenant_keys = today.start, today.end, today.id[1:], {}
        found = self._tenant_keys.get(tenant)
        if found is None:
            assert self.service.derived is not None
            key = day_key(self.service.derived.prefix, tenant, self._today)
            found = self._tenant_keys[tenant] = (key, settled_key(key))
        return found

    def _day_names(self, model: str, key: str | None) -> tuple[Any, ...]:
        """The day-record fields of a model and of an API key (``k|<key>:usd|n``; ``""`` without one),
        built once per (model, key); the counts' fields come as their ``(name, 1)`` pairs."""
        if len(self._day_fields_of) > 100_000:  # managed keys come and go
            self._day_fields_of.clear()
        usd_, n, in_, out, cached, reasoning, est = (f"{model}:{suffix}" for suffix in _DAY_SUFFIXES)
        names = (usd_, (n, 1), in_, out, cached, reasoning, (est, 1))
        names += (("", ("", 1)) if key is None else (f"k|{key}:usd", (f"k|{key}:n", 1)))
        self._day_fields_of[(model, key)] = names
        return names

    def _day_fields(self, ctx: RequestContext, model: str, usage: Usage, amount: int) -> tuple[tuple[str, int], ...]:
        key = None if ctx.api_key is None else ctx.api_key.name
        names = self._day_fields_of.get((model, key)) or self._day_names(model, key)
        usd_, n, in_, out, cached, reasoning, est, key_usd, key_n = names
        fields = ((usd_, amount), n, (in_, usage.prompt_tokens), (out, usage.completion_tokens))
        if usage.cached_tokens:
            fields += ((cached, usage.cached_tokens),)
        if usage.reasoning_tokens:
            fields += ((reasoning, usage.reasoning_tokens),)
        if usage.estimated:
            fields += (est,)
        if key is not None:
            fields += ((key_usd, amount), key_n)
        return fields


JOURNAL_RETRY_S = 5  # retry-after while the journal is full: about how long a replay round takes to start
DAY_RECORD_TTL_MS = int(DAY_RECORD_TTL_S * 1000)
_OUTCOME_COUNTS = {o: f"outcome_{o}" for o in ("ok", "soft", "downgraded", "shadow_over_budget")}
_DAY_SUFFIXES = ("usd", "n", "in", "out", "cached", "reasoning", "est")  # ``_day_names`` order
_new_charge = tuple.__new__  # ``Charge``'s fields as one tuple (its generated ``__new__`` costs twice as much)


def _route_small(ctx: RequestContext) -> tuple[str | None, bool]:
    """The small model of the route this request took (set by the router), or of its virtual model."""
    if ctx.route_spec is not None:
        return ctx.route_spec.small, True
    public = ctx.policy.models.get(ctx.public_model)
    if public is not None and public.route is not None:
        return public.route.small, True
    return None, False


def _reached_model(ctx: RequestContext) -> bool:
    """Did a model start working on this request (so it is billed even without reported usage)?"""
    return ctx.model_reached()  # one rule for budgets and token limits
