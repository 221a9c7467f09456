"""Usage capture: always know the real token usage of an answer, streams included.

Streams ask the upstream for a final usage chunk (``stream_options.include_usage``); the chunk is
read into ``ctx.usage`` and dropped again when the client did not ask for it. Non-stream answers are
read from their ``usage`` object. Generated text is counted so a cut stream can be estimated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from gateway.context import RequestContext, Usage
from gateway.pipeline import GatewayResponse, Stage, Verdict


def usage_from(data: dict) -> Usage | None:
    """OpenAI usage object -> Usage (cached and reasoning token details kept)."""
    u = data.get("usage")
    if not isinstance(u, dict):
        return None
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return Usage(
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
        cached_tokens=int(cached),
        reasoning_tokens=int(reasoning),
    )


def _chunk_text_len(data: dict) -> int:
    n = 0
    for choice in data.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content") if delta else choice.get("text")
        if isinstance(content, str):
            n += len(content)
        for call in delta.get("tool_calls") or ():
            n += len(str((call.get("function") or {}).get("arguments") or ""))
    return n


class UsageStage(Stage):
    name = "usage"

    async def check_input(self, ctx: RequestContext) -> Verdict:
        if ctx.stream and ctx.endpoint in ("chat", "completions"):
            ctx.body["stream_options"] = {**(ctx.body.get("stream_options") or {}), "include_usage": True}
        return None

    async def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        if resp.status != 200:
            return resp
        if resp.events is not None:
            resp.events = self._relay(ctx, resp.events)
        elif resp.body and ctx.usage is None:
            try:
                ctx.usage = usage_from(orjson.loads(resp.body))
            except orjson.JSONDecodeError:
                pass
        return resp

    async def _relay(self, ctx: RequestContext, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for payload in events:
            data = orjson.loads(payload)
            ctx.generated_chars += _chunk_text_len(data)
            usage = usage_from(data)
            if usage is not None:
                ctx.usage = usage
                if not data.get("choices") and not ctx.client_wants_usage:
                    continue
            yield payload
