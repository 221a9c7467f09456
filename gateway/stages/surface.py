"""Surface stage: whatever the request's inbound API keeps once the answer is out (the Responses store)."""

from __future__ import annotations

import logging

from gateway.context import RequestContext
from gateway.pipeline import Stage
from gateway.plan import Scope
from gateway.state.base import StateError
from gateway.surfaces.base import Surface

log = logging.getLogger("gateway.surfaces")


class SurfaceStage(Stage):
    name = "surface"

    def applies(self, scope: Scope) -> bool:
        """Only for a surface that keeps something (the OpenAI surface keeps nothing)."""
        return type(scope.surface).complete is not Surface.complete

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        if error is not None:
            return
        try:
            await ctx.surface.complete(ctx)
        except StateError as exc:
            log.warning("request %s: the %s surface could not keep its answer: %s", ctx.request_id,
                        ctx.surface.name, exc)
