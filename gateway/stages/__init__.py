"""The stage list: the order of stages within each pipeline phase.

Adding a capability means adding its stage here; the runner (``gateway.pipeline``) never changes.
Order matters within a phase, for ``complete`` and for ``on_response`` filters: each filter wraps
the stream the earlier ones produced, so a stage that must see the upstream stream untouched (the
cache keeps the usage chunk) comes before ``UsageStage``, which strips the usage chunk the client
did not ask for.
"""

from __future__ import annotations

from gateway.audit import AuditStage, RedactUpstreamStage
from gateway.pipeline import Stage
from gateway.services import Services
from gateway.stages.auth import AuthStage
from gateway.stages.budget import BudgetStage
from gateway.stages.cache import CacheStage
from gateway.stages.dead_letter import DeadLetterStage
from gateway.stages.input_check import InputStage
from gateway.stages.observe import InFlightStage, Observability, ObserveStage
from gateway.stages.ratelimit import RateLimitStage
from gateway.stages.router import RouterStage
from gateway.stages.upstream import UpstreamStage
from gateway.stages.usage import UsageStage


def build_stages(services: Services) -> list[Stage]:
    obs = Observability(services)  # first: it wraps services.backend with metrics for every stage
    return [
        InFlightStage(obs),  # first: in flight from the first phase
        AuthStage(),
        InputStage(),
        AuditStage(),  # captures the body as the client sent it (before any rewrite)
        RedactUpstreamStage(obs.redactors),  # redact_upstream: before the cache key and the provider
        CacheStage(services),  # before UsageStage: it stores the upstream's usage chunk
        UsageStage(),
        RouterStage(services),  # route phase: before every admit stage (budget, token limits)
        BudgetStage(services),  # admit: reserve the worst-case cost; complete: settle the real one
        # limit_requests (rpm, concurrency) still runs before cache_lookup: phases run in PHASES order.
        # Listed after the budget so that admit reserves tpm for the model a downgrade picked, and
        # after the cache so that complete settles what a shared stream really used.
        RateLimitStage(services),
        DeadLetterStage(services),
        UpstreamStage(services),
        ObserveStage(obs),  # keep last: its complete reads what every other complete settled
    ]
