"""Dead-letter stage: keep exhausted requests, whatever was served instead (503, stale or static).

``complete`` appends a record to the dead-letter sink (``services.dlq``) whenever the upstream stage
marked the request exhausted (``ctx.exhausted``). A replay of a stored request that is exhausted
again is not dead-lettered twice: its record is still in the queue. The admin routes that list and
replay entries live in ``gateway.http.admin``.
"""

from __future__ import annotations

from collections.abc import Awaitable

from gateway.context import RequestContext
from gateway.dlq import DeadLetterQueue
from gateway.pipeline import Stage
from gateway.policy.model import Policy


class DeadLetterStage(Stage):
    name = "dlq"

    def __init__(self, sink: DeadLetterQueue) -> None:
        self.sink = sink

    def on_policy(self, policy: Policy) -> None:
        self.sink.configure(policy)

    def complete(self, ctx: RequestContext, error: BaseException | None) -> Awaitable[str | None] | None:
        """Plain; the push of an exhausted request is returned to be awaited."""
        if ctx.exhausted is not None and ctx.replay_id is None:
            return self.sink.push(ctx, ctx.exhausted)
        return None
