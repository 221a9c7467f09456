"""The request pipeline: named phases, small stages, one runner.

A request walks the phases in ``PHASES`` order. A stage implements only the phases it needs (the
base class's do-nothing defaults are skipped by the runner, so an unused phase costs nothing). A
phase returns ``None`` to continue or ``Respond(...)`` to answer now. After the phases, every
response (upstream answer, early answer or error) passes each stage's ``on_response`` filter, is
written to the client, and then ``complete(ctx, error)`` runs exactly once per request, whatever
happened, including a client disconnect.

Adding a capability means adding a stage to the list built in ``gateway.stages.build_stages``;
this runner never changes for it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from gateway.context import RequestContext
from gateway.errors import GatewayError, UpstreamError
from gateway.policy.model import Policy

log = logging.getLogger("gateway.pipeline")

PHASES = (
    "authenticate",
    "check_input",
    "limit_requests",
    "cache_lookup",
    "route",
    "admit",
    "call_upstream",
)
# ``route`` runs before ``admit`` on purpose: token limits per tenant+model and budget reservations
# need the concrete model (and its price) the router picked, and a budget's soft-limit downgrade
# rewrites that choice during ``admit``. Both still run only on a cache miss.


@dataclass(slots=True)
class GatewayResponse:
    """What the client gets: a whole body, or a stream of SSE JSON payloads (no ``data:`` framing)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    events: AsyncIterator[bytes] | None = None
    content_type: str = "application/json"
    close: Callable[[], Awaitable[None]] | None = None  # release upstream resources

    @property
    def is_stream(self) -> bool:
        return self.events is not None

    async def aclose(self) -> None:
        if self.close is not None:
            close, self.close = self.close, None
            await close()

    @classmethod
    def from_error(cls, err: GatewayError) -> GatewayResponse:
        return cls(status=err.status, headers=dict(err.headers), body=err.body())


@dataclass(slots=True)
class Respond:
    """A stage's verdict to answer now instead of continuing."""

    response: GatewayResponse
    reason: str = "ok"  # outcome vocabulary: cache_hit, over_limit, ...


Verdict = Respond | None


class Stage:
    """Base class: override only the phases you need. Every phase may be cancelled at any await."""

    name = "stage"

    def install(self, app: object) -> None:
        """Called once while the app is built: add routes (admin, feedback) or shared services."""

    async def start(self, app: object) -> None:
        """Called once at start-up (open connections, start background tasks)."""

    async def stop(self) -> None:
        """Called once at shutdown."""

    def on_policy(self, policy: Policy) -> None:
        """Called with each newly loaded policy before it serves (rebuild derived state here)."""

    async def authenticate(self, ctx: RequestContext) -> Verdict:
        return None

    async def check_input(self, ctx: RequestContext) -> Verdict:
        return None

    async def limit_requests(self, ctx: RequestContext) -> Verdict:
        return None

    async def cache_lookup(self, ctx: RequestContext) -> Verdict:
        return None

    async def admit(self, ctx: RequestContext) -> Verdict:
        return None

    async def route(self, ctx: RequestContext) -> Verdict:
        return None

    async def call_upstream(self, ctx: RequestContext) -> Verdict:
        return None

    async def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        return resp

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        return None


def _overrides(stage: Stage, name: str) -> bool:
    return getattr(type(stage), name) is not getattr(Stage, name)


class Pipeline:
    """Runs stages over a request. Built once from the stage list; policy comes from the context."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages
        self._phases = [
            (phase, [getattr(s, phase) for s in stages if _overrides(s, phase)]) for phase in PHASES
        ]
        self._filters = [s.on_response for s in stages if _overrides(s, "on_response")]
        self._completes = [s.complete for s in stages if _overrides(s, "complete")]

    def on_policy(self, policy: Policy) -> None:
        for s in self.stages:
            s.on_policy(policy)

    async def run(self, ctx: RequestContext) -> GatewayResponse:
        """Walk the phases; return the response to write (never raises GatewayError)."""
        try:
            for _phase, handlers in self._phases:
                for handler in handlers:
                    verdict = await handler(ctx)
                    if verdict is not None:
                        ctx.outcome = verdict.reason
                        return await self.filter(ctx, verdict.response)
            raise GatewayError(500, "no stage answered the request", code="no_upstream")
        except GatewayError as err:
            ctx.outcome = err.outcome if ctx.outcome == "ok" else ctx.outcome
            ctx.extras["error"] = err
            return await self.filter(ctx, GatewayResponse.from_error(err))

    async def filter(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        for f in self._filters:
            resp = await f(ctx, resp)
        return resp

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        """Run every stage's ``complete``; one failing stage never stops the others."""
        for fn in self._completes:
            try:
                await fn(ctx, error)
            except Exception:  # noqa: BLE001 - complete must reach every stage
                log.exception("complete failed in %s", getattr(fn, "__self__", fn))


def error_event(err: UpstreamError | GatewayError) -> bytes:
    """The final SSE payload of a broken stream, so SDKs raise instead of seeing a clean end."""
    if isinstance(err, GatewayError):
        return err.body()
    return orjson.dumps(
        {
            "error": {
                "message": f"upstream stream failed: {err.message}",
                "type": "upstream_error",
                "param": None,
                "code": err.kind,
            }
        }
    )
