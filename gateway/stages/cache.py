"""The response cache stage: exact-match answers, stream replay, single-flight, stale answers.

``cache_lookup`` answers a request from a stored entry (``x-cache: HIT``, ``age``) or from an
identical request in flight in this process (also a HIT: the upstream is called once), under a fresh
``id`` and ``created`` (``restamp``); only requests meant to repeat are cached (``is_deterministic``,
or the tenant's ``cache.nondeterministic``), the rest are a BYPASS. Otherwise
the request leads a flight and ``on_response`` captures its answer: a whole 200 body, or a stream
stored only once it ended cleanly. Errors, partial streams and non-``ok`` outcomes are never stored.

Hits are free: they answer before ``admit``, so no token limit or budget sees them, and they are
marked ``ctx.cache_status == "HIT"`` (``ctx.usage`` holds the cached usage, for the client and the
logs; accounting must charge nothing for a HIT). ``ctx.cost_saved_usd`` is what the call would
have cost at the serving model's price. A failing state backend turns the cache into a bypass,
counted in ``services.cache_stats`` (``CacheStats``), and never fails the request.

For failover (``on_exhausted: stale``), ``CacheStage.stale(ctx)`` (handed to the upstream stage) returns an entry
past its TTL (entries are kept ``STALE_FACTOR`` x TTL in all) marked ``x-cache: STALE``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Literal

import orjson

from gateway.budget.pricing import cost, rates_for, usd
from gateway.cache.controls import Controls, parse_controls
from gateway.cache.convert import assemble, replay
from gateway.cache.entry import Entry, entry_from_answer, entry_from_body
from gateway.cache.flight import Flight, FlightTable
from gateway.cache.key import digest, is_deterministic, key_head
from gateway.cache.ready import MAX_BYTES as READY_BYTES
from gateway.cache.ready import Ready, ReadyEntries
from gateway.cache.restamp import STAMPED, ChunkStamper, fresh_id, restamp, restamp_body
from gateway.cache.store import BackendStore, CacheStore, MemoryStore
from gateway.context import RequestContext
from gateway.pipeline import GatewayResponse, Respond, Stage, Verdict
from gateway.plan import Scope
from gateway.policy.model import CachePolicy, ModelSpec, Policy
from gateway.services import Services
from gateway.state.base import StateError
from gateway.surfaces.base import OPENAI
from gateway.usage import Usage

STALE_FACTOR = 2.0  # an entry is fresh for ttl_s and kept, for stale answers, until STALE_FACTOR * ttl_s
Role = Literal["miss", "follower", "hit"]  # follower: waiting on another request's flight


@dataclass(slots=True)
class CacheState:
    """The cache's facts about one request (``ctx.cache_state``)."""

    key: str
    controls: Controls
    policy: CachePolicy
    store: bool  # write the answer (False: no-store, ttl 0, or the backend failed)
    role: Role = "miss"
    flight: Flight | None = None
    joined: bool = False


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """What a request plan fixes of the cache key (``CacheStage.prepare``)."""

    head: str  # ``<prefix>:{<namespace>}:cache:``
    model: str  # the public model the plan is for
    openai: bool  # the OpenAI surface: the endpoint alone names the key's kind
    extras: tuple[tuple[str, ...], bool] | None  # a routed model's steering headers and tenant flag


def saved_usd(model: ModelSpec | None, usage: Usage | None) -> float:
    if model is None or usage is None:
        return 0.0
    return usd(cost(usage, rates_for(model.price)))


async def _chunks(payloads: list[bytes]) -> AsyncIterator[bytes]:
    for payload in payloads:
        yield payload


def _route_extras(policy: Policy) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Per routed model: request headers its rules read, and whether a rule reads the tenant.

    Both steer the answer without being in the body, so they go into the key.
    """
    out: dict[str, tuple[tuple[str, ...], bool]] = {}
    for name, model in policy.models.items():
        if model.route is not None:
            rules = model.route.large_when
            headers = tuple(sorted({r.value[0] for r in rules if r.kind == "header"}))
            out[name] = (headers, any(r.kind == "tenant" for r in rules))
    return out


class CacheStage(Stage):
    name = "cache"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.clock = services.clock
        self.stats = services.cache_stats
        self.flights = FlightTable()
        self.ready = ReadyEntries()  # stored entries decoded once, reused by every hit on them
        self.memory: MemoryStore | None = None
        self.store: CacheStore = BackendStore(services.backend)
        if services.backend.kind != "redis":
            self.memory = MemoryStore(CachePolicy().max_bytes, services.clock)
            self.store = self.memory
        self._prefix = "gw"
        self._route_extras: dict[str, tuple[tuple[str, ...], bool]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def on_policy(self, policy: Policy) -> None:
        self._prefix = policy.state.key_prefix
        self._route_extras = _route_extras(policy)
        if self.memory is not None:
            sizes = [t.cache.max_bytes for t in policy.tenants.values() if t.cache.enabled]
            self.memory.resize(max(sizes, default=CachePolicy().max_bytes))
            self.ready.max_bytes = min(READY_BYTES, self.memory.max_bytes)  # no more than the store holds

    @property
    def pending_writes(self) -> int:
        """Cache writes still running in the background."""
        return len(self._tasks)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- lookup ---------------------------------------------------------------------------------------
    def prepare(self, scope: Scope) -> KeyPlan | None:
        """The key's parts fixed for requests of ``scope``: its namespace and the route's extras."""
        tenant, model = scope.tenant, scope.model
        if tenant is None or model is None:
            return None
        return KeyPlan(key_head(self._prefix, tenant.name, tenant.cache.shared), model.name,
                       scope.surface is OPENAI, self._route_extras.get(model.name))

    def _key(self, ctx: RequestContext, cp: CachePolicy) -> str:
        plan = ctx.plan.values.get(self) if ctx.plan is not None else None
        if plan is None or plan.model != ctx.public_model:  # not the request's own plan: from scratch
            plan = KeyPlan(key_head(self._prefix, ctx.tenant_name, cp.shared), ctx.public_model,
                           ctx.surface is OPENAI, self._route_extras.get(ctx.public_model))
        body = ctx.body
        extras = plan.extras
        if extras is not None:
            headers, by_tenant = extras
            steer = [ctx.request.headers.get(h, "") for h in headers]
            if by_tenant:
                steer.append(ctx.tenant_name)
            body = {**body, "\x00route": steer}  # can't collide with a real field name
        endpoint = ctx.endpoint if plan.openai else f"{ctx.surface.name}:{ctx.endpoint}"
        # A canary's candidate arm is keyed as its own model: one arm never serves the other's answers.
        rollout = ctx.rollout
        public = rollout.candidate if rollout is not None and rollout.variant == "candidate" else ctx.public_model
        return plan.head + digest(endpoint, public, body)

    def _mark(self, ctx: RequestContext, status: str) -> None:
        ctx.cache_status = status
        ctx.response_headers["x-cache"] = status
        if status == "MISS":
            self.stats.misses += 1
        elif status == "BYPASS":
            self.stats.bypasses += 1

    def applies(self, scope: Scope) -> bool:
        """Only for a tenant with its cache on (the entry plan: if any tenant has one)."""
        if scope.tenant is not None:
            return scope.tenant.cache.enabled
        return any(t.cache.enabled for t in scope.policy.tenants.values())

    def cache_lookup(self, ctx: RequestContext) -> Verdict | Awaitable[Verdict]:
        """Plain (no coroutine) on the in-process store unless a flight is joined; a read from the shared
        backend, or the wait on a flight, is returned to be awaited."""
        tenant = ctx.tenant
        if tenant is None or not tenant.cache.enabled:
            return None
        cp = tenant.cache
        if not (cp.nondeterministic or is_deterministic(ctx.body, ctx.endpoint)):
            self._mark(ctx, "BYPASS")
            return None
        controls = parse_controls(ctx.request.headers, cp.ttl_s)
        st = CacheState(self._key(ctx, cp), controls, cp, controls.store)  # (key, controls, policy, store)
        ctx.cache_state = st
        if not controls.lookup:  # no-cache: answer from the upstream, then refresh the entry
            self._own(st, ctx, lead=False)
            self._mark(ctx, "BYPASS")
            return None
        flight = self._joinable(st)  # an identical request in flight: no round trip needed
        if flight is not None:
            return self._joined(ctx, st, flight, True)
        memory = self.memory
        if memory is None:
            return self._read_shared(ctx, st)
        now = self.clock.time()
        raw = memory.get_now(st.key, now)
        found = self.ready.get(st.key, raw, ctx.endpoint) if raw else None
        if found is not None and found.entry.fresh(now, controls.max_age_s):
            return self._hit(ctx, st, found.entry, "HIT", ready=found, now=now)
        return self._missed(ctx, st, True)

    async def _read_shared(self, ctx: RequestContext, st: CacheState) -> Verdict:
        found, ok = await self._read(st.key, ctx.endpoint)
        if found is not None and found.entry.fresh(self.clock.time(), st.controls.max_age_s):
            return self._hit(ctx, st, found.entry, "HIT", ready=found)
        pending = self._missed(ctx, st, ok)
        return None if pending is None else await pending

    def _missed(self, ctx: RequestContext, st: CacheState, ok: bool) -> Awaitable[Verdict] | None:
        """No fresh entry (``ok``: the store answered): lead a flight, or follow one started meanwhile."""
        st.store = st.store and ok
        flight = self._joinable(st)  # one may have started while we read
        if flight is not None:
            return self._joined(ctx, st, flight, ok)
        self._own(st, ctx, lead=True)
        self._mark(ctx, "MISS" if ok else "BYPASS")
        return None

    async def _joined(self, ctx: RequestContext, st: CacheState, flight: Flight, ok: bool) -> Verdict:
        """Wait on ``flight`` (joined); on our own when the leader failed or took too long."""
        if (verdict := await self._follow(ctx, st, flight)) is not None:
            return verdict
        self._own(st, ctx, lead=False)
        self._mark(ctx, "MISS" if ok else "BYPASS")
        return None

    def _joinable(self, st: CacheState) -> Flight | None:
        """The flight in progress for this key, joined; None if absent, failed or too old for max-age.

        A finished flight stays joinable until its entry is stored, so no request falls in between.
        """
        flight = self.flights.get(st.key)
        if flight is None or (flight.entry is not None
                              and not flight.entry.fresh(self.clock.time(), st.controls.max_age_s)):
            return None
        return flight if flight.join() else None

    async def _read(self, key: str, endpoint: str) -> tuple[Ready | None, bool]:
        """The stored entry, ready to serve (None if absent or unreadable), and whether the backend answered."""
        try:
            raw = await self.store.get(key)
        except StateError:
            self.stats.backend_errors += 1
            return None, False
        return (self.ready.get(key, raw, endpoint) if raw else None), True

    def _own(self, st: CacheState, ctx: RequestContext, lead: bool) -> None:
        st.role = "miss"
        st.flight = self.flights.lead(st.key, ctx.endpoint) if lead else self.flights.private(st.key, ctx.endpoint)
        st.joined = True

    def _hit(self, ctx: RequestContext, st: CacheState, entry: Entry, status: str, coalesced: bool = False,
             ready: Ready | None = None, now: float | None = None) -> Respond:
        """Answer from ``entry`` (``ready``: its decoded, stored form): its body as stored, or replayed as a stream.

        ``now``: the time its freshness was judged at (else read here)."""
        st.role = "hit"
        ctx.cache_status = status
        ctx.usage = entry.usage
        models = ctx.policy.models
        if ready is not None and ready.models is models:  # priced once per entry and policy
            served, saved = ready.served, ready.saved
        else:
            served = models.get(entry.model)
            saved = saved_usd(served, entry.usage)
            if ready is not None:
                ready.models, ready.served, ready.saved = models, served, saved
        if served is not None:
            ctx.model = served
        ctx.cost_saved_usd = saved
        if coalesced:
            self.stats.coalesced += 1
        elif status == "HIT":
            self.stats.hits += 1
        else:
            self.stats.stale += 1
        if now is None:
            now = self.clock.time()
        age = now - entry.created  # ``entry.age(now)`` without a call
        headers = {"x-cache": status, "age": str(int(age)) if age > 0.0 else "0", "x-gateway-model": entry.model}
        if ctx.stream:
            data = orjson.loads(entry.body)
            if ctx.endpoint in STAMPED:
                restamp(data, fresh_id(data.get("id"), ctx.endpoint), int(now))
            events = _chunks(replay(data, ctx.endpoint, ctx.client_wants_usage))
            resp = GatewayResponse(200, headers, None, events, None, None, "text/event-stream")  # by position
        else:
            body = restamp_body(entry.body, ctx.endpoint, int(now)) if ready is None else ready.body(int(now))
            resp = GatewayResponse(200, headers, body)  # (status, headers, body)
        return Respond(resp, "cache_hit")

    # -- single-flight followers ----------------------------------------------------------------------
    async def _follow(self, ctx: RequestContext, st: CacheState, flight: Flight) -> Verdict:
        """Wait (bounded) for the identical request in flight; None: proceed on our own."""
        # a follower, not the flight's owner: a client that leaves while waiting must not fail the leader's flight
        st.flight, st.joined, st.role = flight, True, "follower"
        wait_s = ctx.tenant.retry.deadline_s if ctx.tenant is not None else 60.0
        ok = await flight.wait(lambda f: ctx.stream and bool(f.chunks), wait_s)
        entry = flight.entry
        if not ok or flight.state == "failed" or (entry is None and not (ctx.stream and flight.chunks)):
            self._leave(st)
            return None
        if entry is not None and not (ctx.stream and flight.chunks):
            verdict = self._hit(ctx, st, entry, "HIT", coalesced=True)
            self._leave(st)
            return verdict
        self.stats.coalesced += 1
        st.role = "hit"  # a stream in progress: replay it chunk by chunk as it arrives
        ctx.cache_status = "HIT"
        headers = {"x-cache": "HIT", "age": "0"}
        resp = GatewayResponse(status=200, headers=headers, events=self._relay(ctx, flight),
                               content_type="text/event-stream", close=lambda: self._aleave(st))
        return Respond(resp, "cache_hit")

    async def _relay(self, ctx: RequestContext, flight: Flight) -> AsyncIterator[bytes]:
        stamp = ChunkStamper(ctx.endpoint, int(self.clock.time()))  # the leader's chunks, under our own id
        async for payload in flight.follow():
            yield stamp(payload)
        entry = flight.entry
        if entry is not None:
            served = ctx.policy.models.get(entry.model)
            ctx.model = served or ctx.model
            ctx.cost_saved_usd = saved_usd(served, entry.usage)

    def _leave(self, st: CacheState) -> None:
        if st.joined and st.flight is not None:
            st.joined = False
            st.flight.leave()

    async def _aleave(self, st: CacheState) -> None:
        self._leave(st)

    # -- capture --------------------------------------------------------------------------------------
    def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse | Awaitable[GatewayResponse]:
        """Plain for an answer it does not capture (a hit, a bypass); a capture is returned to be awaited."""
        st = ctx.cache_state
        if st is None or st.role != "miss" or st.flight is None or st.flight.settled:
            return resp
        return self._capture(ctx, resp, st, st.flight)

    async def _capture(self, ctx: RequestContext, resp: GatewayResponse, st: CacheState,
                       flight: Flight) -> GatewayResponse:
        if resp.status != 200 or ctx.outcome != "ok" or ctx.budget_outcome == "downgraded":
            flight.fail()  # errors, substitutes (static, stale) and downgraded answers are never stored
            self._leave(st)
            self.stats.skipped += 1
            return resp
        model = ctx.model.name if ctx.model is not None else ctx.public_model
        created, ttl = self.clock.time(), st.controls.ttl_s
        if resp.events is not None:
            flight.start_stream(resp.events, resp.close,
                                lambda f: self._stream_entry(f, created, ttl, model),
                                lambda f: self._settle(st, f))
            self._track(flight.pump)
            resp.events, resp.close = flight.follow(), (lambda: self._aleave(st))
            return resp
        # Parse the answer only if someone can use it: the store, or followers of a shared flight (a
        # private flight that won't be stored, e.g. ``no-store``, would drop it unread).
        wanted = st.store or self.flights.get(st.key) is flight
        flight.finish(entry_from_body(resp.body, created, ttl, model) if resp.body and wanted else None)
        self._leave(st)
        if self.memory is not None or not self._storable(st, flight):
            await self._settle(st, flight)  # never waits: nothing to gain from a task
        else:
            self._track(asyncio.get_running_loop().create_task(self._settle(st, flight)))
        return resp

    @staticmethod
    def _stream_entry(flight: Flight, created: float, ttl: float, model: str) -> Entry | None:
        try:
            answer = assemble(flight.chunks, flight.endpoint)
        except (orjson.JSONDecodeError, TypeError, AttributeError, ValueError):
            return None
        return None if answer is None else entry_from_answer(answer, created, ttl, model)

    @staticmethod
    def _storable(st: CacheState, flight: Flight) -> bool:
        entry = flight.entry
        return entry is not None and st.store and len(entry.body) <= st.policy.max_entry_bytes

    async def _settle(self, st: CacheState, flight: Flight) -> None:
        """Store a finished answer, then let the flight go (until then it serves newcomers itself)."""
        entry = flight.entry
        try:
            if entry is None or not self._storable(st, flight):
                self.stats.skipped += 1
                return  # dropped at once: an answer not stored is not served to newcomers either
            await self.store.set(st.key, entry.encode(), entry.ttl_s * STALE_FACTOR)
            self.stats.stores += 1
        except StateError:
            self.stats.backend_errors += 1
        finally:
            self.flights.drop(flight)

    def _track(self, task: asyncio.Task[None] | None) -> None:
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def complete(self, ctx: RequestContext, error: BaseException | None) -> Awaitable[None] | None:
        """Plain; a leader's wait for a shared stream's usage is returned to be awaited."""
        st = ctx.cache_state
        if st is None or st.flight is None:
            return None
        if st.role == "miss" and st.flight.state == "pending":
            st.flight.fail()  # never answered (cancelled, a bug): followers go on their own
        self._leave(st)
        if st.role == "miss" and ctx.usage is None:
            return self._shared_usage(ctx, st.flight)
        return None

    async def _shared_usage(self, ctx: RequestContext, flight: Flight) -> None:
        """A leader that left a stream others still read: the upstream goes on generating for them, so
        the leader's settlement (budget, tokens) waits, bounded, for the answer's real usage."""
        pump = flight.pump
        if pump is None or pump.done():
            return
        deadline = ctx.started + (ctx.tenant.retry.deadline_s if ctx.tenant is not None else 60.0)
        await asyncio.wait([pump], timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        if flight.state == "done" and flight.entry is not None and flight.entry.usage is not None:
            ctx.usage = flight.entry.usage

    # -- failover -------------------------------------------------------------------------------------
    async def stale(self, ctx: RequestContext) -> GatewayResponse | None:
        """An entry kept past its TTL (or a fresh one) for a request no upstream could answer."""
        st = ctx.cache_state
        if st is None:
            return None
        found, _ = await self._read(st.key, ctx.endpoint)
        if found is None or found.entry.age(self.clock.time()) >= found.entry.ttl_s * STALE_FACTOR:
            return None
        if st.flight is not None and st.role == "miss":
            st.flight.fail()  # followers try for themselves rather than wait on a stale answer
        return self._hit(ctx, st, found.entry, "STALE", ready=found).response
