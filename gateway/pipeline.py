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
import time
from dataclasses import dataclass

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.policy.model import Policy
from gateway.providers.base import UpstreamResponse
from gateway.surfaces.base import OPENAI_FRAMING, Framing

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
class GatewayResponse(UpstreamResponse):
    """What the client gets: an upstream answer, a cached one, or an early answer or error.

    ``framing`` writes a stream: the OpenAI SSE format unless a surface renders it otherwise.
    """

    content_type: str = "application/json"
    framing: Framing = OPENAI_FRAMING

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
    """Base class: override only the phases you need. Every phase may be cancelled at any await.

    The contract of each hook is written on it; ``tests/test_pipeline_contract.py`` runs the runner
    alone with fake stages to hold it.
    """

    name = "stage"

    async def start(self) -> None:
        """Once at start-up, after the state backend started, in list order (background tasks)."""

    async def stop(self) -> None:
        """Once at shutdown, in reverse list order; a failing stop does not stop the others."""

    def on_policy(self, policy: Policy) -> None:
        """With each newly loaded policy, before it serves, in list order (rebuild derived state here).

        Requests already running keep their own ``ctx.policy``.
        """

    async def authenticate(self, ctx: RequestContext) -> Verdict:
        """Who is calling: set ``ctx.tenant``/``ctx.api_key`` or answer 401."""
        return None

    async def check_input(self, ctx: RequestContext) -> Verdict:
        """Parse and check the body; set the model, stream flag and token estimate."""
        return None

    async def limit_requests(self, ctx: RequestContext) -> Verdict:
        """Cheap per-request limits (rpm, concurrency): before the cache, so hits count too."""
        return None

    async def cache_lookup(self, ctx: RequestContext) -> Verdict:
        """Answer from the cache; what follows runs only on a miss."""
        return None

    async def route(self, ctx: RequestContext) -> Verdict:
        """Pick the concrete model (``ctx.model``) a virtual model or a context fallback serves from."""
        return None

    async def admit(self, ctx: RequestContext) -> Verdict:
        """Cost checks for the concrete model: token limits, budget reservations (may downgrade)."""
        return None

    async def call_upstream(self, ctx: RequestContext) -> Verdict:
        """Produce the answer. A request no stage answers is a 500 ``no_upstream``."""
        return None

    async def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        """Filter every response (answers, early answers and errors alike), in list order.

        A filter may wrap ``resp.events``: each wraps the stream the earlier filters produced.
        """
        return resp

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        """Exactly once per request, in list order, after the answer was written (or the client left).

        Runs for every stage whatever happened, including stages whose phases never ran; an exception
        here is logged and the next stage's ``complete`` still runs. ``error`` is the error answered,
        the stream failure, or the cancellation of a client that left; None on success.
        """
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
        """Walk the phases, then the filters; return the response to write (never raises GatewayError
        from a phase: it becomes the answer, and the filters run on it once)."""
        try:
            resp = await self._walk(ctx)
        except GatewayError as err:
            ctx.outcome = err.outcome if ctx.outcome == "ok" else ctx.outcome
            ctx.error = err
            resp = GatewayResponse.from_error(err)
        if ctx.phase_marks is not None:
            ctx.phase_marks.append(("respond", time.time()))
        return await self.filter(ctx, resp)

    async def _walk(self, ctx: RequestContext) -> GatewayResponse:
        for phase, handlers in self._phases:
            if ctx.phase_marks is not None:  # a traced request (the tracing stage's spans); None when off
                ctx.phase_marks.append((phase, time.time()))
            for handler in handlers:
                verdict = await handler(ctx)
                if verdict is not None:
                    ctx.outcome = verdict.reason
                    return verdict.response
        raise GatewayError(500, "no stage answered the request", code="no_upstream")

    async def filter(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        for f in self._filters:
            resp = await f(ctx, resp)
        return resp

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        """Run every stage's ``complete``; one failing stage never stops the others."""
        if ctx.phase_marks is not None:
            ctx.phase_marks.append(("complete", time.time()))
        for fn in self._completes:
            try:
                await fn(ctx, error)
            except Exception:  # noqa: BLE001 - complete must reach every stage
                log.exception("complete failed in %s", getattr(fn, "__self__", fn))
