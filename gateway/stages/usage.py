"""Usage capture: always know the real token usage of an answer, streams included.

Streams ask the upstream for a final usage chunk (``stream_options.include_usage``); the chunk is
read into ``ctx.usage`` and dropped again when the client did not ask for it (a ``usage`` riding on
a chunk that also has choices is removed from it instead). Non-stream answers are read from their
``usage`` object (``gateway.usage``). Generated text is
counted (``ctx.generated_chars``) so an answer without usage, a cut stream or a client that left
can still be charged by estimate (see ``gateway.budget.pricing.estimate_usage``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from gateway.context import RequestContext
from gateway.pipeline import GatewayResponse, Stage, Verdict
from gateway.usage import generated_len, tail_usage, usage_from


class UsageStage(Stage):
    name = "usage"

    def check_input(self, ctx: RequestContext) -> Verdict:
        if ctx.stream and ctx.endpoint in ("chat", "completions"):
            # a new dict, not an edit: the audit capture holds the body as the client sent it
            options = {**(ctx.body.get("stream_options") or {}), "include_usage": True}
            ctx.body = {**ctx.body, "stream_options": options}
        return None

    def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        if resp.status != 200:
            return resp
        if resp.events is not None:
            resp.events = self._relay(ctx, resp.events)
        elif resp.body and ctx.usage is None:
            # the answer's usage, read without parsing (or re-encoding) the rest when it comes last
            if (usage := tail_usage(resp.body)) is not None:
                ctx.usage = usage
            else:
                self._read_body(ctx, resp.body)
        return resp

    @staticmethod
    def _read_body(ctx: RequestContext, body: bytes) -> None:
        """The answer's usage when it is not last (``tail_usage`` found none): the whole answer parsed."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        ctx.usage = usage_from(data)
        if ctx.usage is None:
            ctx.generated_chars += generated_len(data)

    async def _relay(self, ctx: RequestContext, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for payload in events:
            try:
                data = orjson.loads(payload)
            except orjson.JSONDecodeError:
                yield payload
                continue
            if not isinstance(data, dict):
                yield payload
                continue
            ctx.generated_chars += generated_len(data)
            usage = usage_from(data)
            if usage is not None:
                ctx.usage = usage
                if not ctx.client_wants_usage:
                    if not data.get("choices"):
                        continue  # the usage chunk the gateway asked for, not the client
                    data.pop("usage")
                    payload = orjson.dumps(data)
            yield payload
