"""The llm_judge guardrail: a model of the gateway's own policy scores the text between 0 and 1.

The judge gets the guardrail's prompt as the system message and the text (clipped) as the user
message, answers in a few tokens, and the first number in its answer is the score; at or above the
threshold the guardrail's action applies. Its deployments are tried in order; no usable answer within
``timeout_ms`` (an error, a non-200, no number) is settled by ``on_error`` like a webhook's. With
``budget_usd`` each answered call is charged to the judge's own budget (``judge_budget``), and once
the period's budget is spent the judge is not asked: ``on_error`` settles it as ``over_budget_*``.
"""

from __future__ import annotations

import asyncio
import logging
import re

import orjson

from gateway.errors import UpstreamError
from gateway.guardrails.checks import ALLOW, Finding
from gateway.guardrails.judge_budget import JudgeBudget
from gateway.guardrails.text import answer_text
from gateway.policy.model import Guardrail, ModelSpec, Policy
from gateway.providers.base import UpstreamRequest
from gateway.providers.live import LiveProviders
from gateway.state.base import StateError
from gateway.usage import usage_from

log = logging.getLogger("gateway.guardrails")
MAX_TEXT_CHARS = 16_000  # what the judge reads of a long prompt or answer
MAX_TOKENS = 8
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def _fallback(guard: Guardrail, why: str) -> Finding:
    return Finding(f"{why}_block" if guard.on_error == "block" else f"{why}_allow")


class Judge:
    def __init__(self, providers: LiveProviders, budget: JudgeBudget) -> None:
        self.providers = providers
        self.budget = budget

    async def ask(self, guard: Guardrail, policy: Policy, text: str, call_id: str) -> Finding:
        """The judge's verdict on ``text``; ``call_id`` is unique per call (its budget charge id)."""
        prefix = policy.state.key_prefix
        try:
            if await self.budget.spent(prefix, guard):
                return _fallback(guard, "over_budget")
        except StateError as exc:
            log.warning("guardrail %s: the judge's budget cannot be read: %s", guard.name, exc)
            return _fallback(guard, "error")
        spec = policy.model(guard.model)
        text = text[:MAX_TEXT_CHARS]
        try:
            async with asyncio.timeout(guard.timeout_ms / 1000):
                answer = await self._answer(guard, spec, text, call_id)
        except (TimeoutError, ValueError, KeyError, UpstreamError) as exc:
            log.warning("guardrail %s: judge failed (%s): %s", guard.name, type(exc).__name__, exc)
            return _fallback(guard, "error")
        said = answer_text(answer)
        if spec is not None:  # always, once a deployment answered
            await self.budget.charge(prefix, guard, spec, usage_from(answer),
                                     (len(guard.prompt) + len(text), len(said)), call_id)
        found = _NUMBER.search(said)
        if found is None:
            log.warning("guardrail %s: the judge's answer holds no score", guard.name)
            return _fallback(guard, "error")
        if float(found.group()) < guard.threshold:
            return ALLOW
        return Finding("block" if guard.action == "block" else "flag")

    async def _answer(self, guard: Guardrail, spec: ModelSpec | None, text: str, call_id: str) -> dict:
        """The first 200 answer of the judge model's deployments, parsed."""
        if spec is None or not spec.deployments:
            raise ValueError(f"no deployments for model '{guard.model}'")
        messages = [{"role": "system", "content": guard.prompt}, {"role": "user", "content": text}]
        failure = "no deployment answered"
        for dep in spec.deployments:
            body = {"model": dep.model, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
            req = UpstreamRequest(endpoint="chat", body=body, stream=False, request_id=call_id)
            resp = await self.providers.get(dep.provider).send(req)
            try:
                if resp.status != 200:
                    failure = f"{dep.name} answered {resp.status}"
                    continue
                data = orjson.loads(resp.body or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("the judge's answer is not an object")
                return data
            finally:
                await resp.aclose()
        raise ValueError(failure)
