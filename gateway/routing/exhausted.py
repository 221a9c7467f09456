"""What a request gets when every deployment failed: a 503, or the model's static safe answer.

(When every attempt was a 429, the answer is a 429 with the upstreams' ``retry-after`` instead:
the provider is throttling, not down, and clients treat the two differently.)

The static answer is a normal completion (``finish_reason: stop``, zero usage) in the shape the
client asked for, whole or streamed, so applications keep working; ``x-gateway-exhausted: static``
tells operators (and ``gateway dlq replay``) that it was not a real answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator

import orjson

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.pipeline import GatewayResponse
from gateway.policy.model import ModelSpec

EXHAUSTED_HEADER = "x-gateway-exhausted"


def exhausted_error(model: ModelSpec, last_error: str | None, retry_after_s: float) -> GatewayError:
    """503 with ``retry-after`` (whole seconds, at least 1): SDKs back off and retry on their own."""
    detail = f" (last error: {last_error})" if last_error else ""
    return GatewayError(
        503, f"Every upstream deployment of model '{model.name}' failed{detail}.",
        code="upstream_unavailable", headers={"retry-after": str(max(1, math.ceil(retry_after_s)))},
        outcome="exhausted")


def rate_limited_error(model: ModelSpec, retry_after_s: float) -> GatewayError:
    """Every attempt was refused with 429: the upstreams are throttling us, not down; say so faithfully."""
    return GatewayError(
        429, f"Every upstream deployment of model '{model.name}' is rate limited; retry after the given delay.",
        code="upstream_rate_limited", headers={"retry-after": str(max(1, math.ceil(retry_after_s)))},
        outcome="exhausted")


def _usage() -> dict:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def static_response(ctx: RequestContext, model: ModelSpec) -> GatewayResponse | None:
    """The configured safe default as a chat or text completion; None for embeddings (no such thing)."""
    if ctx.endpoint == "embeddings":
        return None
    chat = ctx.endpoint == "chat"
    base = {"id": f"static-{ctx.request_id}", "created": int(time.time()), "model": ctx.public_model}
    headers = {EXHAUSTED_HEADER: "static"}
    if ctx.stream:
        return GatewayResponse(status=200, headers=headers, events=_static_events(base, model.static_response, chat),
                               content_type="text/event-stream")
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": model.static_response},
                  "finish_reason": "stop"}
        data = {**base, "object": "chat.completion", "choices": [choice], "usage": _usage()}
    else:
        choice = {"index": 0, "text": model.static_response, "finish_reason": "stop", "logprobs": None}
        data = {**base, "object": "text_completion", "choices": [choice], "usage": _usage()}
    return GatewayResponse(status=200, headers=headers, body=orjson.dumps(data))


async def _static_events(base: dict, text: str, chat: bool) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk" if chat else "text_completion"
    if chat:
        first = {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}
        last = {"index": 0, "delta": {}, "finish_reason": "stop"}
    else:
        first = {"index": 0, "text": text, "finish_reason": None}
        last = {"index": 0, "text": "", "finish_reason": "stop"}
    yield orjson.dumps({**base, "object": kind, "choices": [first]})
    yield orjson.dumps({**base, "object": kind, "choices": [last]})
    yield orjson.dumps({**base, "object": kind, "choices": [], "usage": _usage()})
