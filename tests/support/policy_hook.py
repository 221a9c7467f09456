"""A loopback guardrail webhook: answers scripted verdicts and records every payload it received.

    hook = servers.call(PolicyHook().start())
    hook.answer({"verdict": "block", "message": "no"}, Slow(2.0), Status(500))

Each POST takes the next scripted answer; once the script is empty it answers ``allow``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Slow:
    """Answer ``allow`` after ``seconds`` (past the guardrail's timeout)."""

    seconds: float


@dataclass
class Status:
    """Answer this HTTP status with a non-protocol body."""

    status: int


class PolicyHook:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.script: deque[Any] = deque()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/check"

    def answer(self, *answers: Any) -> None:
        self.script.extend(answers)

    async def start(self) -> PolicyHook:
        app = web.Application()
        app.router.add_post("/check", self._check)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _check(self, request: web.Request) -> web.Response:
        self.received.append(orjson.loads(await request.read()))
        answer = self.script.popleft() if self.script else {"verdict": "allow"}
        if isinstance(answer, Slow):
            await asyncio.sleep(answer.seconds)
            answer = {"verdict": "allow"}
        if isinstance(answer, Status):
            return web.Response(status=answer.status, text="oops")
        return web.Response(body=orjson.dumps(answer), content_type="application/json")
