"""The Anthropic Messages surface (``POST /v1/messages``), translated through the internal chat form.

Errors take Anthropic's shape and status codes (an exhausted failover is a 529 ``overloaded_error``),
and rate-limit headers Anthropic's names (``anthropic-ratelimit-*``) beside ``retry-after``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.providers.base import NativeAnswer
from gateway.surfaces.anthropic_errors import anthropic_error, error_payload
from gateway.surfaces.anthropic_native import replace_text
from gateway.surfaces.anthropic_request import messages_to_chat
from gateway.surfaces.anthropic_response import chat_to_message, new_message_id
from gateway.surfaces.anthropic_stream import MessagesStream, frame
from gateway.surfaces.base import DROPPED_HEADER, Framing, Surface, openai_error
from gateway.surfaces.translate import apply_dropped

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.pipeline import GatewayResponse

PASSED_HEADERS = ("anthropic-beta", "anthropic-version")  # to Anthropic deployments on the lossless path
RATE_HEADERS = {
    "x-ratelimit-limit-requests": "anthropic-ratelimit-requests-limit",
    "x-ratelimit-remaining-requests": "anthropic-ratelimit-requests-remaining",
    "x-ratelimit-reset-requests": "anthropic-ratelimit-requests-reset",
    "x-ratelimit-limit-tokens": "anthropic-ratelimit-tokens-limit",
    "x-ratelimit-remaining-tokens": "anthropic-ratelimit-tokens-remaining",
    "x-ratelimit-reset-tokens": "anthropic-ratelimit-tokens-reset",
}


class MessagesFraming(Framing):
    def __init__(self, stream: MessagesStream) -> None:
        self.stream = stream

    def frame(self, payload: bytes) -> bytes:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return b""
        return b"".join(self.stream.feed(chunk)) if isinstance(chunk, dict) else b""

    def end(self) -> bytes:
        return b"".join(self.stream.close())

    def error(self, err: UpstreamError | GatewayError) -> bytes:
        kind = "overloaded_error" if isinstance(err, UpstreamError) else "api_error"
        return self.stream.fail(kind, err.message)


class NativeFraming(Framing):
    """The lossless path: the Anthropic deployment's own frames, written as they were read."""

    def __init__(self, native: NativeAnswer) -> None:
        self.native = native

    def frame(self, payload: bytes) -> bytes:
        return self.native.take()

    def end(self) -> bytes:
        return self.native.take()

    def error(self, err: UpstreamError | GatewayError) -> bytes:
        kind = "overloaded_error" if isinstance(err, UpstreamError) else "api_error"
        return self.native.take() + frame("error", error_payload(kind, err.message))


class MessagesSurface(Surface):
    name = "messages"

    def native_headers(self, ctx: RequestContext) -> dict[str, str]:
        return {k: v for k in PASSED_HEADERS if (v := ctx.request.headers.get(k))}

    def rewrite_native(self, native: NativeAnswer, text: str) -> bool:
        native.frames[:] = replace_text(native.frames, text)
        return True

    async def inbound(self, ctx: RequestContext, body: dict) -> dict:
        chat, dropped = messages_to_chat(body)
        apply_dropped(ctx, body.get("model"), dropped)
        ctx.native_body = body
        ctx.surface_state = new_message_id()
        return chat

    def render(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        for ours, theirs in RATE_HEADERS.items():
            if ours in ctx.response_headers:
                ctx.response_headers[theirs] = ctx.response_headers[ours]
        if resp.status != 200:
            error = openai_error(resp.body)
            status, body = anthropic_error(resp.status, str(error.get("message") or "error"),
                                           error.get("code"), request_id=ctx.request_id)
            resp.status, resp.body, resp.events = status, body, None
            return resp
        if resp.native is not None:  # answered by an Anthropic deployment from the client's own body
            ctx.dropped = ()  # nothing was dropped after all
            ctx.response_headers.pop(DROPPED_HEADER, None)
            if resp.events is not None:
                resp.framing = NativeFraming(resp.native)
            elif resp.native.body is not None:
                resp.body = resp.native.body
            return resp
        native = ctx.native_body or {}
        model = str(native.get("model") or ctx.public_model)
        stops = native.get("stop_sequences") or ()
        message_id = ctx.surface_state if isinstance(ctx.surface_state, str) else new_message_id()
        if resp.events is not None:
            resp.framing = MessagesFraming(MessagesStream(model, message_id, ctx.prompt_tokens_est,
                                                          stop_sequences=stops))
        elif resp.body:
            resp.body = orjson.dumps(chat_to_message(orjson.loads(resp.body), model, stop_sequences=stops,
                                                     message_id=message_id))
        return resp
