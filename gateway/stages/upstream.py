"""The upstream call: send the request to the model's deployments and shape the answer.

Deployments are tried in order; a transport failure or a status in ``retry.on_status`` moves to
the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from gateway.context import Attempt, RequestContext
from gateway.errors import GatewayError, UpstreamError
from gateway.pipeline import GatewayResponse, Respond, Stage, Verdict
from gateway.policy.model import Deployment
from gateway.providers import ProviderRegistry, UpstreamRequest, UpstreamResponse
from gateway.providers.base import retry_after_seconds

PASS_HEADERS = ("retry-after", "retry-after-ms")


def upstream_body(ctx: RequestContext, deployment: Deployment) -> dict:
    body = dict(ctx.body)
    body["model"] = deployment.model
    return body


def error_response(resp: UpstreamResponse) -> GatewayResponse:
    """An upstream error answered faithfully: its status, an OpenAI-shaped body, retry hints."""
    body = resp.body or b""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if not (isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)):
        msg = f"upstream returned HTTP {resp.status}"
        body = GatewayError(resp.status, msg, code="upstream_error").body()
    headers = {k: resp.headers[k] for k in PASS_HEADERS if k in resp.headers}
    return GatewayResponse(status=resp.status, headers=headers, body=body)


class UpstreamStage(Stage):
    name = "upstream"

    def __init__(self, providers: ProviderRegistry) -> None:
        self.providers = providers

    async def call_upstream(self, ctx: RequestContext) -> Verdict:
        model = ctx.model
        assert model is not None and ctx.tenant is not None
        retry = ctx.tenant.retry
        last: UpstreamError | UpstreamResponse | None = None
        for deployment in model.deployments:
            resp = await self._attempt(ctx, deployment)
            if isinstance(resp, UpstreamError):
                last = resp
                continue
            if resp.status >= 400 and resp.status in retry.on_status:
                last = resp
                continue
            return Respond(self._answer(ctx, resp), "ok" if resp.status < 400 else "upstream_error")
        return Respond(self._exhausted(last), "upstream_error")

    async def _attempt(self, ctx: RequestContext, deployment: Deployment) -> UpstreamResponse | UpstreamError:
        provider = self.providers.get(deployment.provider)
        loop = asyncio.get_running_loop()
        attempt = Attempt(deployment=deployment.name, provider=deployment.provider, started=loop.time())
        ctx.attempts.append(attempt)
        ctx.deployment = deployment
        req = UpstreamRequest(
            endpoint=ctx.endpoint,
            body=upstream_body(ctx, deployment),
            stream=ctx.stream,
            request_id=ctx.request_id,
            headers=ctx.upstream_headers,
        )
        try:
            resp = await provider.send(req)
        except UpstreamError as err:
            attempt.error_kind, attempt.error = err.kind, err.message
            return err
        finally:
            attempt.duration_s = attempt.ttfb_s = loop.time() - attempt.started
            ctx.upstream_wait_s += attempt.duration_s
        attempt.status = resp.status
        if resp.status >= 400:
            attempt.error_kind = "429" if resp.status == 429 else "5xx" if resp.status >= 500 else "4xx"
        return resp

    def _answer(self, ctx: RequestContext, resp: UpstreamResponse) -> GatewayResponse:
        d = ctx.deployment
        assert d is not None
        ctx.response_headers["x-gateway-model"] = ctx.model.name if ctx.model else ""
        ctx.response_headers["x-gateway-provider"] = d.provider
        if resp.status >= 400:
            return error_response(resp)
        if resp.events is not None:
            return GatewayResponse(status=200, events=self._timed(ctx, resp.events), close=resp.aclose,
                                   content_type="text/event-stream")
        return GatewayResponse(status=resp.status, body=resp.body)

    async def _timed(self, ctx: RequestContext, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass chunks through, adding the time spent waiting on the upstream to ``upstream_wait_s``."""
        loop = asyncio.get_running_loop()
        it = events.__aiter__()
        while True:
            t0 = loop.time()
            try:
                payload = await it.__anext__()
            except StopAsyncIteration:
                return
            finally:
                ctx.upstream_wait_s += loop.time() - t0
            yield payload

    @staticmethod
    def _exhausted(last: UpstreamError | UpstreamResponse | None) -> GatewayResponse:
        if isinstance(last, UpstreamResponse):
            return error_response(last)
        retry_after = None if last is None else last.retry_after_s
        msg = "all upstream deployments failed" + (f": {last.message}" if last is not None else "")
        status = 504 if last is not None and last.kind == "timeout" else 502
        headers = {"retry-after": str(int(retry_after or 1))}
        return GatewayResponse.from_error(GatewayError(status, msg, code="upstream_unavailable", headers=headers))


__all__ = ["UpstreamStage", "error_response", "retry_after_seconds", "upstream_body"]
