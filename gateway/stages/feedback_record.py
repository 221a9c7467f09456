"""The feedback record of an answered request (``gateway.observability.feedback``), kept in ``complete``.

On a shared backend the record rides the request's own ``complete`` state call when it makes one
(the budget settle and rate-limit release, ``gateway.stages.state_batch``): listed after the stages
that fill that call and before ``StateBatchStage``, which sends it, this stage adds the record's
``SetOp`` only when the call has other work, so a request pays no round trip of its own for it
(issue 15: two per request). Otherwise the record goes to the batch writer (one call per tenant's
batch), and on the memory backend it stays in process.
"""

from __future__ import annotations

import functools

from gateway.context import RequestContext
from gateway.observability.feedback import RequestRecords
from gateway.pipeline import Stage
from gateway.plan import Scope


class FeedbackRecordStage(Stage):
    """Keeps each answered request's record, in ``complete``'s state call when there is one."""

    name = "feedback_record"

    def __init__(self, records: RequestRecords) -> None:
        self.records = records

    def applies(self, scope: Scope) -> bool:
        """Only for tenants that keep records (``audit.feedback_ttl_s`` > 0)."""
        return scope.tenant is None or scope.tenant.audit.feedback_ttl_s > 0

    def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        """Remember the request (memory), or queue its record's write in the state batch: nothing waits
        here, so a plain function (no coroutine per request)."""
        records, batch = self.records, ctx.state_batch
        if batch is None or records.in_process or not batch.sends("complete"):
            records.remember(ctx)
            return
        op = records.write_op(ctx)
        if op is not None:
            batch.add("complete", op, functools.partial(records.written, op))
