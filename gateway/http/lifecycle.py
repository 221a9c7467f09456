"""Start-up and shutdown order: the backend, then the stages (and the policy watcher); stopped in reverse."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline
    from gateway.services import Services


def add_lifecycle(app: web.Application, services: Services, pipeline: Pipeline, watch: bool) -> None:
    holder = services.holder

    async def on_startup(app: web.Application) -> None:
        await services.backend.start()
        for stage in pipeline.stages:
            await stage.start()
        if watch:
            holder.watch()

    async def on_cleanup(app: web.Application) -> None:
        await holder.stop()
        for stage in reversed(pipeline.stages):
            with contextlib.suppress(Exception):
                await stage.stop()
        await services.providers.close()
        await services.backend.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
