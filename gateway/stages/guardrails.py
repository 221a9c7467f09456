"""Guardrail stage: the policy's checks on the request (``pre``) and on the answer (``post``).

``pre`` runs in ``check_input``, after the body is parsed (and redacted for the upstream) and
before any limit, cache lookup or upstream call: a block costs nothing, and a redaction or a
webhook's replacement is what the cache key, the router and the provider see. ``post`` is an
``on_response`` filter on 200 answers (cache hits too): a whole body is checked before it is
written. A stream is checked by each guardrail's ``stream`` mode:

* ``end``: on its assembled text once it ended; the text flowed as it came, so a block ends the
  stream with the surface's error event, and a webhook's replacement can no longer be applied
  (``modify_unapplied``). A redaction cannot be ``end`` (refused at load).
* ``hold``: the same check, but the whole stream waits for it when any guardrail of the request
  holds: a block releases nothing, a redaction or replacement rewrites the held text (on the lossless
  path the surface rewrites its provider's own frames).
* ``window``: every ``window_chars`` of new text (with ``window_overlap_chars`` of the window before)
  is checked as it flows, and its chunks are released once it passed; a block ends the stream there.
  A window guardrail's verdicts are recorded once per stream (a block, else the first that was not
  ``allow``).

A block answers 400 ``guardrail_blocked`` naming the guardrail, never its rule. Guardrails run in
the tenant's order, then the model's; every verdict is counted and logged.
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
from gateway.guardrails.judge_budget import JudgeBudget
from gateway.guardrails.text import (
    answer_text,
    replace_answer,
    replace_stream_text,
    request_text,
    rewrite_request,
)
from gateway.guardrails.webhook import WebhookClient
from gateway.guardrails.windows import Windows
from gateway.observability.audit import RedactorCache, stream_text
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline import GatewayResponse, Respond, Stage, Verdict
from gateway.plan import Scope
from gateway.policy.model import Guardrail, ModelSpec, Policy, Tenant
from gateway.providers.live import LiveProviders

OUTCOME = "guardrail_blocked"
UNAPPLIED = Finding("modify_unapplied")  # a replacement of streamed text that already went out


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

    def __init__(self, metrics: GatewayMetrics, redactors: RedactorCache, providers: LiveProviders,
                 judge_budget: JudgeBudget) -> None:
        self.counter = metrics.guardrail_verdicts
        self.redactors = redactors
        self.webhooks = WebhookClient()
        self.judge = Judge(providers, judge_budget)

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
        verdict, finding = _effective(guard, finding)
        self._count(ctx, GuardrailVerdict(guard.name, stage, verdict, started,
                                          asyncio.get_running_loop().time() - started))
        return finding

    def _count(self, ctx: RequestContext, verdict: GuardrailVerdict) -> None:
        self.counter.labels(verdict.guardrail, verdict.stage, verdict.verdict).inc()
        ctx.guardrails.append(verdict)

    # -- pre -----------------------------------------------------------------------------------------
    async def check_input(self, ctx: RequestContext) -> Verdict:
        guards = _planned(self, ctx, "pre")
        for guard in guards:
            started = asyncio.get_running_loop().time()
            finding = self._record(ctx, guard, "pre", await self._pre(ctx, guard), started)
            if finding.blocks:
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
            return await self.judge.ask(guard, ctx.policy, text, f"{ctx.request_id}-judge-{guard.name}-pre")
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

    async def _post_all(self, ctx: RequestContext, guards: list[Guardrail], data: dict[str, Any],
                        late: bool = False) -> tuple[Finding, Guardrail | None, dict[str, Any], Guardrail | None]:
        """Run the post guardrails over an answer: (the blocking finding and guardrail, the answer, and
        the last guardrail that rewrote it). ``late``: the text already went out, a replacement cannot apply."""
        changed = None
        for guard in guards:
            started = asyncio.get_running_loop().time()
            found = await self._post(ctx, guard, data)
            finding = self._record(ctx, guard, "post", UNAPPLIED if late and found.body is not None else found,
                                   started)
            if finding.blocks:
                return finding, guard, data, changed
            if finding.rewrite is not None:
                data, changed = replace_answer(data, finding.rewrite(answer_text(data))), guard
            elif finding.body is not None:
                data, changed = finding.body, guard
        return ALLOW, None, data, changed

    async def _post(self, ctx: RequestContext, guard: Guardrail, data: dict[str, Any], call: str = "") -> Finding:
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
            return await self.judge.ask(guard, ctx.policy, text, f"{ctx.request_id}-judge-{guard.name}-post{call}")
        return ALLOW

    async def _stream(self, ctx: RequestContext, guards: list[Guardrail], resp: GatewayResponse,
                      events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Check windows as the text flows and the assembled text at the end (see the module's docstring)."""
        hold = any(g.stream == "hold" for g in guards)
        windowed = [g for g in guards if g.stream == "window"]
        whole = [g for g in guards if g.stream != "window"]
        windows = Windows.for_guards(windowed) if windowed else None
        tally: dict[str, GuardrailVerdict] = {}
        held: list[bytes] = []
        parts: list[str] = []
        try:
            async for payload in events:
                text = stream_text(payload)
                if whole:
                    parts.append(text)
                held.append(payload)
                window = windows.feed(text) if windows is not None else None
                if window is not None:
                    await self._window(ctx, windowed, window, windows.count, tally, resp)
                if not hold and (windows is None or window is not None):
                    for released in held:
                        yield released
                    held = []
            if windows is not None and (window := windows.take()) is not None:
                await self._window(ctx, windowed, window, windows.count, tally, resp)
        finally:
            for verdict in tally.values():
                self._count(ctx, verdict)
        if whole:
            held = await self._end(ctx, whole, resp, held, "".join(parts), hold)
        for payload in held:
            yield payload

    async def _window(self, ctx: RequestContext, guards: list[Guardrail], text: str, number: int,
                      tally: dict[str, GuardrailVerdict], resp: GatewayResponse) -> None:
        """Check one window; a block withholds what is held and ends the stream."""
        loop = asyncio.get_running_loop()
        answer = _chat_answer(ctx, text)
        for guard in guards:
            started = loop.time()
            found = await self._post(ctx, guard, answer, f"-w{number}")
            verdict, finding = _effective(guard, UNAPPLIED if found.body is not None else found)
            seen = tally.get(guard.name)
            if seen is None or seen.verdict == "allow" or finding.blocks:
                seen = tally[guard.name] = GuardrailVerdict(guard.name, "post", verdict, started, 0.0)
            seen.duration_s += loop.time() - started
            if finding.blocks:
                _withhold(resp)
                raise blocked(guard, "post", finding.message)

    async def _end(self, ctx: RequestContext, guards: list[Guardrail], resp: GatewayResponse,
                   held: list[bytes], text: str, hold: bool) -> list[bytes]:
        """The checks of the assembled text: raise on a block, else the held chunks (rewritten if changed)."""
        finding, guard, answer, changed = await self._post_all(ctx, guards, _chat_answer(ctx, text), late=not hold)
        if guard is None and changed is not None and resp.native is not None \
                and not ctx.surface.rewrite_native(resp.native, answer_text(answer)):
            guard = changed  # the provider's own frames cannot be rewritten here: withhold them instead
        if guard is not None:
            _withhold(resp)
            raise blocked(guard, "post", finding.message)
        return replace_stream_text(held, answer_text(answer)) if changed is not None else held


def _effective(guard: Guardrail, finding: Finding) -> tuple[str, Finding]:
    """(the verdict recorded, the finding that applies): in shadow mode a change is only recorded."""
    if guard.mode == "shadow" and finding.changes:
        return f"shadow_{finding.verdict}", ALLOW
    return finding.verdict, finding


def _withhold(resp: GatewayResponse) -> None:
    """The provider's own frames of a stopped stream stay unsent (the lossless path)."""
    if resp.native is not None:
        resp.native.frames.clear()


def _chat_answer(ctx: RequestContext, text: str) -> dict[str, Any]:
    return {"object": "chat.completion", "model": ctx.public_model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
