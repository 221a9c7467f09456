"""The llm_judge guardrail: a model of the gateway's own policy scores the text between 0 and 1.

The judge gets the guardrail's prompt as the system message and the text (clipped) as the user
message, answers in a few tokens, and the first number in its answer is the score; at or above the
threshold the guardrail's action applies. Its deployments are tried in order; no usable answer within
``timeout_ms`` (an error, a non-200, no number) is settled by ``on_error`` like a webhook's.
"""

from __future__ import annotations

import asyncio
import logging
import re

import orjson

from gateway.errors import UpstreamError
from gateway.guardrails.checks import ALLOW, Finding
from gateway.guardrails.text import answer_text
from gateway.policy.model import Guardrail, Policy
from gateway.providers.base import UpstreamRequest
from gateway.providers.live import LiveProviders

log = logging.getLogger("gateway.guardrails")
MAX_TEXT_CHARS = 16_000  # what the judge reads of a long prompt or answer
MAX_TOKENS = 8
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


class Judge:
    def __init__(self, providers: LiveProviders) -> None:
        self.providers = providers

    async def ask(self, guard: Guardrail, policy: Policy, text: str, request_id: str) -> Finding:
        try:
            async with asyncio.timeout(guard.timeout_ms / 1000):
                score = await self._score(guard, policy, text, request_id)
        except (TimeoutError, ValueError, KeyError, UpstreamError) as exc:
            log.warning("guardrail %s: judge failed (%s): %s", guard.name, type(exc).__name__, exc)
            return Finding("error_block" if guard.on_error == "block" else "error_allow")
        if score < guard.threshold:
            return ALLOW
        return Finding("block" if guard.action == "block" else "flag")

    async def _score(self, guard: Guardrail, policy: Policy, text: str, request_id: str) -> float:
        spec = policy.model(guard.model)
        if spec is None or not spec.deployments:
            raise ValueError(f"no deployments for model '{guard.model}'")
        messages = [{"role": "system", "content": guard.prompt}, {"role": "user", "content": text[:MAX_TEXT_CHARS]}]
        failure = "no deployment answered"
        for dep in spec.deployments:
            body = {"model": dep.model, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
            req = UpstreamRequest(endpoint="chat", body=body, stream=False, request_id=f"{request_id}-judge")
            resp = await self.providers.get(dep.provider).send(req)
            try:
                if resp.status != 200:
                    failure = f"{dep.name} answered {resp.status}"
                    continue
                found = _NUMBER.search(answer_text(orjson.loads(resp.body or b"{}")))
                if found is None:
                    raise ValueError("the judge's answer holds no score")
                return float(found.group())
            finally:
                await resp.aclose()
        raise ValueError(failure)
