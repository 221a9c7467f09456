"""A mock upstream's server life: an aiohttp app on a free 127.0.0.1 port, started and stopped in tests."""

from __future__ import annotations

import socket
from typing import Any

from aiohttp import web


class LoopbackServer:
    """Subclasses build their app in ``build_app``; ``port`` is known once ``start`` returns."""

    runner_options: dict[str, Any] = {}  # extra ``web.AppRunner`` options (e.g. handler_cancellation)

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0

    def build_app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> Any:  # the subclass itself
        self._runner = web.AppRunner(self.build_app(), access_log=None, **self.runner_options)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.port = sock.getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
