"""The stage list: the order of stages within each pipeline phase.

Adding a capability means adding its stage here; the runner (``gateway.pipeline``) never changes.
Phases run in ``PHASES`` order whatever the list says; the list orders stages *within* a phase, and
the ``on_response`` filters and ``complete`` hooks. The ordering rules (each is tested in
tests/test_stage_order.py):

1. ``InFlightStage`` first: a request is in flight from its first phase.
2. ``AuditStage`` before ``RedactUpstreamStage``: the audit captures the body as the client sent it.
3. ``RedactUpstreamStage`` before ``CacheStage``: the cache key and the provider see the redacted body.
4. ``CacheStage`` before ``UsageStage``: filters wrap the stream the earlier ones produced, and the
   cache must store the upstream's usage chunk before ``UsageStage`` strips what the client did not
   ask for.
5. ``RouterStage`` before ``BudgetStage`` and ``RateLimitStage`` (``route`` runs before ``admit``
   anyway): token limits and reservations need the concrete model.
6. ``BudgetStage`` before ``RateLimitStage``: ``admit`` reserves tpm for the model a budget downgrade
   picked, and ``complete`` settles what a shared stream really used.
7. ``ObserveStage`` last: its ``complete`` reads what every other ``complete`` settled.
8. ``GuardrailStage`` after ``InputStage``, ``AuditStage`` and ``RedactUpstreamStage``, and before
   ``CacheStage``: pre guardrails read the parsed body (``check_input`` runs before every limit, the
   cache and the upstream, so a block costs nothing), the audit keeps what the client sent, and a
   redaction or a webhook's replacement is what the cache key and the provider see; its post filter
   wraps the answer before the cache's, so a blocked answer is never stored.
9. ``TracingStage`` right before ``ObserveStage``: its ``complete`` reads the usage, cost and outcome
   the other stages settled; its server span is timed from the request's arrival whatever phase
   opens it, and its ``traceparent`` is set in ``authenticate``, before any upstream call.
10. ``RolloutStage`` right after ``InputStage``: it needs the requested model, and the cache, the
    router and admission must see the arm it chose (a candidate request is keyed, routed and
    admitted as the candidate).
11. ``StateBatchStage`` right after ``BudgetStage``, ``RateLimitStage`` and ``FeedbackRecordStage``:
    its ``admit`` and ``complete`` send the state work those queued in ``ctx.state_batch`` as one call
    (issue 15), then hand each its reply in list order (the budget's first: a downgrade decides the
    token limits). A plan that runs any of them must run it too.
12. ``FeedbackRecordStage`` after ``BudgetStage`` and ``RateLimitStage``: its ``complete`` adds the
    feedback record to ``complete``'s call only when their settle or release already makes that call
    (else the record goes to the batch writer: no round trip of the request's own).
"""

from __future__ import annotations

from gateway.guardrails.judge_budget import JudgeBudget
from gateway.observability.hub import Observability
from gateway.pipeline import Stage
from gateway.services import Services
from gateway.stages.audit import AuditStage, RedactUpstreamStage
from gateway.stages.auth import AuthStage
from gateway.stages.budget import BudgetStage
from gateway.stages.cache import CacheStage
from gateway.stages.dead_letter import DeadLetterStage
from gateway.stages.feedback_record import FeedbackRecordStage
from gateway.stages.guardrails import GuardrailStage
from gateway.stages.input_check import InputStage
from gateway.stages.observe import InFlightStage, ObserveStage
from gateway.stages.ratelimit import RateLimitStage
from gateway.stages.rollout import RolloutStage
from gateway.stages.router import RouterStage
from gateway.stages.state_batch import StateBatchStage
from gateway.stages.surface import SurfaceStage
from gateway.stages.tracing import TracingStage
from gateway.stages.upstream import UpstreamStage
from gateway.stages.usage import UsageStage


def build_stages(services: Services, obs: Observability) -> list[Stage]:
    cache = CacheStage(services)
    return [
        InFlightStage(obs),
        AuthStage(services.keys, services.clock),
        InputStage(),
        RolloutStage(services, obs.redactors),
        AuditStage(),
        RedactUpstreamStage(obs.redactors),
        GuardrailStage(services.metrics, obs.redactors, services.providers,
                       JudgeBudget(services.backend, services.clock)),
        cache,
        UsageStage(),
        RouterStage(services),
        BudgetStage(services),
        RateLimitStage(services),
        FeedbackRecordStage(obs.records),
        StateBatchStage(services.backend),
        DeadLetterStage(services.dlq),
        UpstreamStage(services, stale=cache.stale),
        SurfaceStage(),
        TracingStage(obs.redactors, services.backend),
        ObserveStage(obs),
    ]
