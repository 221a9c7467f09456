"""Guardrail stage: the policy's checks on the request (``pre``) and on the answer (``post``).

``pre`` runs in ``check_input``, after the body is parsed (and redacted for the upstream) and
before any limit, cache lookup or upstream call: a block costs nothing, and a redaction or a
webhook's replacement is what the cache key, the router and the provider see. ``post`` is an
``on_response`` filter on 200 answers (cache hits too): a whole body is checked before it is
written; a stream is checked on its assembled text at the end, held back entirely when any of the
request's post guardrails says ``stream: hold`` (a block then releases nothing, and a redaction
rewrites the held text), otherwise released as it flows and, on a block, ended with the surface's
error event. A block answers 400 ``guardrail_blocked`` naming the guardrail, never its rule.
Guardrails run in the tenant's order, then the model's; every verdict is counted and logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.context import GuardrailVerdict, RequestContext
from gateway.errors import GatewayError
from gateway.guardrails.checks import ALLOW, Finding, check_deny, check_json, check_pii, check_size
from gateway.guardrails.judge import Judge
from gateway.guardrails.text import (
    answer_text,
    replace_answer,
    replace_stream_text,
    request_text,
    rewrite_request,
)
from gateway.guardrails.webhook import WebhookClient
from gateway.observability.audit import RedactorCache, stream_text
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline import GatewayResponse, Respond, Stage, Verdict
from gateway.plan import Scope
from gateway.policy.model import Guardrail, ModelSpec, Policy, Tenant
from gateway.providers.live import LiveProviders

OUTCOME = "guardrail_blocked"


def blocked(guard: Guardrail, stage: str, message: str | None = None) -> GatewayError:
    what = "request" if stage == "pre" else "answer"
    text = f"The {what} was blocked by guardrail '{guard.name}'" + (f": {message}" if message else ".")
    return GatewayError(400, text, code=OUTCOME, outcome=OUTCOME)


def active(ctx: RequestContext, stage: str) -> list[Guardrail]:
    """The request's guardrails for ``stage``: the tenant's, then its model's, each once."""
    if ctx.tenant is None or not ctx.policy.guardrails:
        return []
    return _active(ctx.policy, ctx.tenant, ctx.policy.model(ctx.public_model), stage)


def _active(policy: Policy, tenant: Tenant, spec: ModelSpec | None, stage: str) -> list[Guardrail]:
    names = dict.fromkeys((*tenant.guardrails, *(spec.guardrails if spec is not None else ())))
    found = (policy.guardrails.get(n) for n in names)
    return [g for g in found if g is not None and stage in g.on]


def _planned(stage: Stage, ctx: RequestContext, which: str) -> list[Guardrail]:
    """The plan's precomputed list (``prepare``), else worked out for this request."""
    plan = ctx.plan
    if plan is not None and plan.scope.tenant is not None and stage in plan.values:
        return plan.values[stage][which]
    return active(ctx, which)


class GuardrailStage(Stage):
    name = "guardrails"

    def __init__(self, metrics: GatewayMetrics, redactors: RedactorCache, providers: LiveProviders) -> None:
        self.counter = metrics.guardrail_verdicts
        self.redactors = redactors
        self.webhooks = WebhookClient()
        self.judge = Judge(providers)

    async def stop(self) -> None:
        await self.webhooks.close()

    def applies(self, scope: Scope) -> bool | frozenset[str]:
        """``check_input`` when the request has pre guardrails, ``on_response`` when it has post ones."""
        if not scope.policy.guardrails:
            return False
        if scope.tenant is None:
            return True
        lists = self.prepare(scope)
        return frozenset(h for h, w in (("check_input", "pre"), ("on_response", "post")) if lists[w])

    def prepare(self, scope: Scope) -> dict[str, list[Guardrail]]:
        if scope.tenant is None or not scope.policy.guardrails:
            return {"pre": [], "post": []}
        return {w: _active(scope.policy, scope.tenant, scope.model, w) for w in ("pre", "post")}

    def _record(self, ctx: RequestContext, guard: Guardrail, stage: str, finding: Finding,
                started: float) -> Finding:
        """Count and log the verdict; in shadow mode a verdict that would change something changes nothing."""
        verdict = finding.verdict
        if guard.mode == "shadow" and finding.changes:
            verdict, finding = f"shadow_{verdict}", ALLOW
        self.counter.labels(guard.name, stage, verdict).inc()
        ctx.guardrails.append(GuardrailVerdict(guard.name, stage, verdict, started,
                                               asyncio.get_running_loop().time() - started))
        return finding

    # -- pre -----------------------------------------------------------------------------------------
    async def check_input(self, ctx: RequestContext) -> Verdict:
        guards = _planned(self, ctx, "pre")
        for guard in guards:
            started = asyncio.get_running_loop().time()
            finding = self._record(ctx, guard, "pre", await self._pre(ctx, guard), started)
            if finding.verdict in ("block", "error_block"):
                return Respond(GatewayResponse.from_error(blocked(guard, "pre", finding.message)), OUTCOME)
            if finding.rewrite is not None:
                self._rewrite(ctx, finding)
            elif finding.body is not None:
                await self._replace(ctx, finding.body)
        return None

    async def _pre(self, ctx: RequestContext, guard: Guardrail) -> Finding:
        if guard.kind == "webhook":
            return await self.webhooks.ask(guard, self._payload(ctx, guard, "pre"))
        text = request_text(ctx.body)
        if guard.kind == "pii":
            return check_pii(guard, text, self.redactors.for_request(ctx))
        if guard.kind == "deny":
            return check_deny(guard, text)
        if guard.kind == "max_prompt":
            return check_size(guard, text, ctx.prompt_tokens_est)
        if guard.kind == "llm_judge":
            return await self.judge.ask(guard, ctx.policy, text, ctx.request_id)
        return ALLOW

    def _rewrite(self, ctx: RequestContext, finding: Finding) -> None:
        """A redaction: the internal body and the client's own (forwarded as is to its API's family)."""
        assert finding.rewrite is not None
        body, changed = rewrite_request(ctx.body, finding.rewrite)
        if changed:
            ctx.body, ctx.raw_body = body, orjson.dumps(body)
        if ctx.native_body is not None:
            ctx.native_body = rewrite_request(ctx.native_body, finding.rewrite)[0]

    async def _replace(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        """A webhook's replacement request, in the client's form; it cannot change the model or stream."""
        source = ctx.native_body if ctx.native_body is not None else ctx.body
        body = {**body, **{k: source[k] for k in ("model", "stream") if k in source}}
        if ctx.native_body is not None:
            ctx.native_body = body
            body = await ctx.surface.inbound(ctx, body)
        ctx.body, ctx.raw_body = body, orjson.dumps(body)

    def _payload(self, ctx: RequestContext, guard: Guardrail, stage: str, answer: Any = None) -> dict[str, Any]:
        request = ctx.native_body if ctx.native_body is not None else ctx.body
        payload = {"stage": stage, "tenant": ctx.tenant_name, "model": ctx.public_model,
                   "surface": ctx.endpoint if ctx.surface.name == "openai" else ctx.surface.name,
                   "request": request}
        if stage == "post":
            payload["response"] = answer
        if guard.redact:
            redactor = self.redactors.for_request(ctx)
            payload = {**payload, "request": redactor.value(request), "response": redactor.value(answer)}
        return payload

    # -- post ----------------------------------------------------------------------------------------
    async def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        if resp.status != 200 or ctx.endpoint == "embeddings":
            return resp
        guards = _planned(self, ctx, "post")
        if not guards:
            return resp
        if resp.events is not None:
            resp.events = self._stream(ctx, guards, resp, resp.events)
            return resp
        try:
            data = orjson.loads(resp.body or b"")
        except orjson.JSONDecodeError:
            return resp
        finding, guard, data, changed = await self._post_all(ctx, guards, data)
        if guard is not None:
            err = blocked(guard, "post", finding.message)
            ctx.error, ctx.outcome = err, OUTCOME
            return GatewayResponse.from_error(err)
        if changed is not None:
            resp.body, resp.native = orjson.dumps(data), None  # the rewritten answer, rendered from chat
        return resp

    async def _post_all(self, ctx: RequestContext, guards: list[Guardrail],
                        data: dict[str, Any]) -> tuple[Finding, Guardrail | None, dict[str, Any], Guardrail | None]:
        """Run the post guardrails over an answer: (the blocking finding and guardrail, the answer, and
        the last guardrail that rewrote it)."""
        changed = None
        for guard in guards:
            started = asyncio.get_running_loop().time()
            finding = self._record(ctx, guard, "post", await self._post(ctx, guard, data), started)
            if finding.verdict in ("block", "error_block"):
                return finding, guard, data, changed
            if finding.rewrite is not None:
                data, changed = replace_answer(data, finding.rewrite(answer_text(data))), guard
            elif finding.body is not None:
                data, changed = finding.body, guard
        return ALLOW, None, data, changed

    async def _post(self, ctx: RequestContext, guard: Guardrail, data: dict[str, Any]) -> Finding:
        if guard.kind == "webhook":
            return await self.webhooks.ask(guard, self._payload(ctx, guard, "post", data))
        text = answer_text(data)
        if guard.kind == "pii":
            return check_pii(guard, text, self.redactors.for_request(ctx))
        if guard.kind == "deny":
            return check_deny(guard, text)
        if guard.kind == "json_schema":
            return check_json(guard, text, ctx.body)
        if guard.kind == "llm_judge":
            return await self.judge.ask(guard, ctx.policy, text, ctx.request_id)
        return ALLOW

    async def _stream(self, ctx: RequestContext, guards: list[Guardrail], resp: GatewayResponse,
                      events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Check the assembled text at the end; hold every chunk until then if a guardrail says so."""
        hold = any(g.stream == "hold" for g in guards)
        held: list[bytes] = []
        parts: list[str] = []
        async for payload in events:
            parts.append(stream_text(payload))
            if hold:
                held.append(payload)
            else:
                yield payload
        text = "".join(parts)
        answer = {"object": "chat.completion", "model": ctx.public_model,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                               "finish_reason": "stop"}]}
        finding, guard, answer, changed = await self._post_all(ctx, guards, answer)
        if guard is None and changed is not None and hold and resp.native is not None:
            guard = changed  # the provider's own frames cannot be rewritten: withhold them instead
        if guard is not None:
            if resp.native is not None:
                resp.native.frames.clear()  # the provider's own frames of a held answer stay unsent
            raise blocked(guard, "post", finding.message)
        if changed is not None and hold:
            held = replace_stream_text(held, answer_text(answer))
        for payload in held:
            yield payload
