"""The OpenAI Responses surface (``POST /v1/responses``), translated through the internal chat form.

``previous_response_id`` continues a stored conversation (``ResponseStore``, in the state backend, so
the follow-up may land on any replica); answers are stored unless the request says ``store: false``.
Errors keep the OpenAI shape, which Responses shares with chat.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import GatewayError, UpstreamError, invalid
from gateway.providers.base import NativeAnswer
from gateway.surfaces.base import DROPPED_HEADER, Framing, Surface
from gateway.surfaces.responses_items import input_to_history, output_to_history
from gateway.surfaces.responses_native import place_text, replace_text
from gateway.surfaces.responses_request import responses_to_chat
from gateway.surfaces.responses_response import chat_to_response
from gateway.surfaces.responses_stream import ResponsesStream, sse_frame
from gateway.surfaces.store import ResponseStore
from gateway.surfaces.translate import apply_dropped

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.pipeline import GatewayResponse


@dataclass(slots=True)
class ResponsesState:
    response_id: str
    created_at: int
    history: list[dict]
    final: dict | None = None  # the whole Response, once answered


class ResponsesFraming(Framing):
    def __init__(self, stream: ResponsesStream, state: ResponsesState) -> None:
        self.stream = stream
        self.state = state

    def frame(self, payload: bytes) -> bytes:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return b""
        return b"".join(self.stream.feed(chunk)) if isinstance(chunk, dict) else b""

    def end(self) -> bytes:
        frames = self.stream.close()
        self.state.final = self.stream.final
        return b"".join(frames)

    def error(self, err: UpstreamError | GatewayError) -> bytes:
        code = err.code if isinstance(err, GatewayError) and err.code else "server_error"
        return b"".join(self.stream.fail(code, err.message))


class NativeFraming(Framing):
    """The lossless path: the deployment's own Responses events, written as they were read."""

    def __init__(self, native: NativeAnswer, state: ResponsesState) -> None:
        self.native = native
        self.state = state

    def frame(self, payload: bytes) -> bytes:
        return self.native.take()

    def end(self) -> bytes:
        self.state.final = self.native.final if isinstance(self.native.final, dict) else None
        return self.native.take()

    def error(self, err: UpstreamError | GatewayError) -> bytes:
        code = err.code if isinstance(err, GatewayError) and err.code else "server_error"
        event = {"type": "error", "code": code, "message": err.message, "param": None, "sequence_number": 0}
        return self.native.take() + sse_frame(event)


class ResponsesSurface(Surface):
    name = "responses"

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    def rewrite_native(self, native: NativeAnswer, text: str) -> bool:
        native.frames[:] = replace_text(native.frames, text)
        if isinstance(native.final, dict):
            place_text(native.final, text)  # what the store keeps for previous_response_id
        return True

    def forwardable(self, ctx: RequestContext) -> bool:
        """The deployment does not know the gateway's stored ids: a continued conversation is translated."""
        return ctx.native_body is not None and ctx.native_body.get("previous_response_id") is None

    async def inbound(self, ctx: RequestContext, body: dict) -> dict:
        history: list[dict] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            history = await self._history(ctx, previous)
        chat, dropped = responses_to_chat(body, history or None)
        apply_dropped(ctx, body.get("model"), dropped)
        ctx.native_body = body
        ctx.surface_state = ResponsesState(f"resp_{secrets.token_hex(16)}", int(time.time()), history)
        return chat

    async def _history(self, ctx: RequestContext, previous: Any) -> list[dict]:
        if not isinstance(previous, str) or not previous:
            raise invalid("'previous_response_id' must be a response id", param="previous_response_id",
                          code="invalid_type")
        stored = await self.store.get(ctx.policy.state.key_prefix, ctx.tenant_name, previous)
        if stored is None:
            raise GatewayError(400, f"Previous response with id '{previous}' not found.",
                               param="previous_response_id", code="previous_response_not_found",
                               outcome="rejected")
        return list(stored.get("history") or [])

    def render(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        state = ctx.surface_state
        if resp.status != 200 or not isinstance(state, ResponsesState) or ctx.native_body is None:
            return resp
        if resp.native is not None:  # answered by a deployment that serves /v1/responses itself
            ctx.dropped = ()
            ctx.response_headers.pop(DROPPED_HEADER, None)
            if resp.events is not None:
                resp.framing = NativeFraming(resp.native, state)
            elif resp.native.body is not None:
                resp.body = resp.native.body
                state.final = resp.native.final if isinstance(resp.native.final, dict) else None
            return resp
        if resp.events is not None:
            resp.framing = ResponsesFraming(ResponsesStream(state.response_id, ctx.native_body, state.created_at),
                                            state)
        elif resp.body:
            chat = orjson.loads(resp.body)
            state.final = chat_to_response(chat, response_id=state.response_id, request=ctx.native_body,
                                           created_at=state.created_at, completed_at=int(time.time()))
            resp.body = orjson.dumps(state.final)
        return resp

    async def complete(self, ctx: RequestContext) -> None:
        state, body = ctx.surface_state, ctx.native_body
        if not isinstance(state, ResponsesState) or state.final is None or body is None:
            return
        if body.get("store") is False or ctx.tenant is None:
            return
        history = state.history + input_to_history(body) + output_to_history(state.final.get("output") or [])
        record = {"response": state.final, "history": history}
        response_id = str(state.final.get("id") or state.response_id)  # the deployment's own, on the lossless path
        await self.store.put(ctx.policy.state.key_prefix, ctx.tenant.name, response_id, record)
