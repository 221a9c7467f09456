"""Usage capture: always know the real token usage of an answer, streams included.

Streams ask the upstream for a final usage chunk (``stream_options.include_usage``); the chunk is
read into ``ctx.usage`` and dropped again when the client did not ask for it (a ``usage`` riding on
a chunk that also has choices is removed from it instead). Non-stream answers are read from their
``usage`` object. Cached-prompt and reasoning token details are kept (OpenAI's
``prompt_tokens_details.cached_tokens``, which the Anthropic adapter fills from
``cache_read_input_tokens``; DeepSeek-style ``prompt_cache_hit_tokens``). Generated text is
counted (``ctx.generated_chars``) so an answer without usage, a cut stream or a client that left
can still be charged by estimate (see ``gateway.budget.pricing.estimate_usage``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.context import RequestContext, Usage
from gateway.pipeline import GatewayResponse, Stage, Verdict


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_from(data: dict) -> Usage | None:
    """OpenAI usage object -> Usage (cached and reasoning token details kept)."""
    u = data.get("usage")
    if not isinstance(u, dict):
        return None
    prompt_details = u.get("prompt_tokens_details") or {}
    completion_details = u.get("completion_tokens_details") or {}
    cached = _int(prompt_details.get("cached_tokens")) or _int(u.get("prompt_cache_hit_tokens"))
    return Usage(
        prompt_tokens=_int(u.get("prompt_tokens")),
        completion_tokens=_int(u.get("completion_tokens")),
        cached_tokens=cached,
        reasoning_tokens=_int(completion_details.get("reasoning_tokens")),
    )


def _text_len(holder: dict) -> int:
    """Characters of generated text (content and tool-call arguments) in a delta or a message."""
    n = 0
    content = holder.get("content")
    if isinstance(content, str):
        n += len(content)
    for call in holder.get("tool_calls") or ():
        if isinstance(call, dict):
            n += len(str((call.get("function") or {}).get("arguments") or ""))
    return n


def generated_len(data: dict) -> int:
    """Generated characters in a stream chunk or a whole answer, chat or legacy completions."""
    n = 0
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        holder = choice.get("delta") or choice.get("message")
        if isinstance(holder, dict):
            n += _text_len(holder)
        elif isinstance(choice.get("text"), str):
            n += len(choice["text"])
    return n


class UsageStage(Stage):
    name = "usage"

    async def check_input(self, ctx: RequestContext) -> Verdict:
        if ctx.stream and ctx.endpoint in ("chat", "completions"):
            # a new dict, not an edit: the audit capture holds the body as the client sent it
            options = {**(ctx.body.get("stream_options") or {}), "include_usage": True}
            ctx.body = {**ctx.body, "stream_options": options}
        return None

    async def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        if resp.status != 200:
            return resp
        if resp.events is not None:
            resp.events = self._relay(ctx, resp.events)
        elif resp.body and ctx.usage is None:
            self._read_body(ctx, resp.body)
        return resp

    @staticmethod
    def _read_body(ctx: RequestContext, body: bytes) -> None:
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
