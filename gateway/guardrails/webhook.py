"""The webhook guardrail: POST the request (and the answer, post) to a policy hook, honour its verdict.

Protocol (docs/guardrails.md): the hook receives ``{"stage", "tenant", "model", "surface",
"request", "response"?}`` and answers ``{"verdict": "allow"}``, ``{"verdict": "block", "message"}``
or ``{"verdict": "modify", "body": {...}}``. A timeout, a transport error, a non-2xx status or an
answer outside the protocol is an error, settled by ``on_error``: ``allow`` (fail open) or
``block`` (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson

from gateway.guardrails.checks import ALLOW, Finding
from gateway.policy.model import Guardrail

log = logging.getLogger("gateway.guardrails")
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class WebhookClient:
    """One pooled HTTP session for every webhook guardrail of the process."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ask(self, guard: Guardrail, payload: dict[str, Any]) -> Finding:
        """The hook's verdict on ``payload``, or the ``on_error`` verdict when it has none."""
        try:
            async with asyncio.timeout(guard.timeout_ms / 1000):
                return verdict_of(await self._post(guard.url, payload))
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            log.warning("guardrail %s: webhook failed (%s): %s", guard.name, type(exc).__name__, exc)
            return Finding("error_block" if guard.on_error == "block" else "error_allow")

    async def _post(self, url: str, payload: dict[str, Any]) -> Any:
        headers = {"content-type": "application/json"}
        async with self._client().post(url, data=orjson.dumps(payload), headers=headers) as resp:
            if resp.status // 100 != 2:
                raise ValueError(f"status {resp.status}")
            raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
            if len(raw) > MAX_ANSWER_BYTES:
                raise ValueError("answer too large")
            return orjson.loads(raw)


def verdict_of(answer: Any) -> Finding:
    """The protocol's three answers; anything else raises ``ValueError`` (an error verdict)."""
    verdict = answer.get("verdict") if isinstance(answer, dict) else None
    if verdict == "allow":
        return ALLOW
    if verdict == "block":
        message = answer.get("message")
        return Finding("block", message=message if isinstance(message, str) else None)
    if verdict == "modify" and isinstance(answer.get("body"), dict):
        return Finding("modify", body=answer["body"])
    raise ValueError("answer outside the protocol")
