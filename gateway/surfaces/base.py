"""The surface contract: how one inbound wire format meets the pipeline, which runs on OpenAI chat.

A ``Surface`` turns its request body into the internal chat form (``inbound``, from the input
stage), renders each answer back (``render``, just before the writer: whole bodies, errors, and a
``Framing`` for streams), and may keep something once the request is done (``complete``, from the
surface stage: the Responses store). The OpenAI surface is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import GatewayError, UpstreamError

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.pipeline import GatewayResponse
    from gateway.providers.base import NativeAnswer

DONE_FRAME = b"data: [DONE]\n\n"
DROPPED_HEADER = "x-gateway-dropped"


def rewrite_frames(frames: list[bytes], edit: Callable[[Any], bool]) -> list[bytes]:
    """SSE frames with each parsed ``data:`` event offered to ``edit``, which changes it in place and
    says so; a frame it leaves alone (or that is not JSON) is kept byte for byte."""
    out: list[bytes] = []
    for raw in frames:
        head, sep, data = raw.partition(b"data: ")
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            out.append(raw)
            continue
        out.append(head + sep + orjson.dumps(event) + b"\n\n" if edit(event) else raw)
    return out


def data_frame(payload: bytes) -> bytes:
    """One SSE event of the OpenAI wire format."""
    return b"data: " + payload + b"\n\n"


def error_event(err: UpstreamError | GatewayError) -> bytes:
    """The final SSE payload of a broken stream, so SDKs raise instead of seeing a clean end."""
    if isinstance(err, GatewayError):
        return err.body()
    return orjson.dumps({"error": {"message": f"upstream stream failed: {err.message}", "type": "upstream_error",
                                   "param": None, "code": err.kind}})


class Framing:
    """How a stream of internal chat payloads is written: the OpenAI SSE format, ended by ``[DONE]``."""

    def frame(self, payload: bytes) -> bytes:
        return data_frame(payload)

    def end(self) -> bytes:
        return DONE_FRAME

    def error(self, err: UpstreamError | GatewayError) -> bytes:
        return data_frame(error_event(err))


OPENAI_FRAMING = Framing()


def openai_error(body: bytes | None) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped error body (what the pipeline answers), or {}."""
    try:
        data = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


class Surface:
    """An inbound API. The base class is the OpenAI surface: the pipeline's own form, unchanged."""

    name = "openai"

    async def inbound(self, ctx: RequestContext, body: dict) -> dict:
        """The request body in the internal chat form (raise ``GatewayError`` to refuse it)."""
        return body

    def render(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        """The answer in this surface's wire format."""
        return resp

    def forwardable(self, ctx: RequestContext) -> bool:
        """May the native body go as it is to a provider of this surface's family?"""
        return ctx.native_body is not None

    def native_headers(self, ctx: RequestContext) -> dict[str, str]:
        """Client headers a provider of this surface's own family receives with the native body."""
        return {}

    def rewrite_native(self, native: NativeAnswer, text: str) -> bool:
        """Replace the text of a held stream's provider frames (the lossless path) by ``text`` (a guardrail's
        redaction), in place; False when this surface cannot (the answer is then withheld)."""
        return False

    async def complete(self, ctx: RequestContext) -> None:
        """After the answer was written (once per request)."""


OPENAI = Surface()
