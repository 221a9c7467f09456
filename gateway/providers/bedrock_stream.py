"""ConverseStream: the AWS binary event stream in, OpenAI ``chat.completion.chunk`` payloads out.

The body is a sequence of frames (prelude with lengths and a CRC, headers, JSON payload, message CRC),
decoded with botocore's ``EventStreamBuffer`` as bytes arrive. ``:message-type`` is ``event`` (with
``:event-type`` messageStart, contentBlockStart, contentBlockDelta, contentBlockStop, messageStop,
metadata), ``exception`` (``:exception-type``, e.g. throttlingException) or ``error``. The finish
chunk goes out on messageStop; usage arrives after it, in metadata. A stream that ends before
messageStop, or carries an exception, is a failure (``StreamFailed``, raised by the translator).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.errors import UpstreamError
from gateway.providers.bedrock_errors import canonical
from gateway.providers.bedrock_translate import finish_reason, usage
from gateway.providers.openai import stall_message
from gateway.providers.watchdog import Watchdog


class StreamFailed(Exception):
    """An ``exception``/``error`` frame inside a 200 stream; ``kind`` is its AWS error type."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind


def _header(headers: dict[str, Any], name: str) -> str:
    value = headers.get(name)
    return value.decode() if isinstance(value, bytes) else str(value or "")


def frame_event(headers: dict[str, Any], payload: bytes) -> tuple[str, dict[str, Any]]:
    """``(event type, JSON payload)`` of an event frame; exception and error frames raise ``StreamFailed``."""
    kind = _header(headers, ":message-type") or "event"
    if kind == "exception":
        try:
            message = str(orjson.loads(payload).get("message") or "")
        except (orjson.JSONDecodeError, AttributeError):
            message = payload.decode(errors="replace")[:200]
        raise StreamFailed(canonical(_header(headers, ":exception-type") or "exception"), message)
    if kind == "error":
        raise StreamFailed(_header(headers, ":error-code") or "error", _header(headers, ":error-message"))
    data = orjson.loads(payload) if payload else {}
    if not isinstance(data, dict):
        raise ValueError("an event payload must be a JSON object")
    return _header(headers, ":event-type"), data


async def timed_frames(resp: aiohttp.ClientResponse, name: str, idle_s: float,
                       deadline: float) -> AsyncIterator[tuple[dict[str, Any], bytes]]:
    """Decoded ``(headers, payload)`` frames; each read waits at most ``idle_s`` (one ``Watchdog``).

    Ends quietly at EOF (the translator knows whether the stream was complete); a torn last frame
    or a bad checksum is a protocol error. Releases or closes the connection however it ends.
    """
    from botocore.eventstream import EventStreamBuffer, ParserError

    dog = Watchdog(idle_s, deadline)
    buffer = EventStreamBuffer()
    pending = 0
    try:
        while True:
            dog.enter()
            try:
                data = await resp.content.readany()
            except asyncio.CancelledError:
                if dog.expired():
                    raise UpstreamError("timeout", stall_message(name, idle_s, deadline - dog.loop.time())) from None
                raise
            except (aiohttp.ClientError, OSError) as exc:
                raise UpstreamError("stream_cut", f"{name} stream broke: {type(exc).__name__}") from exc
            dog.since = 0.0
            if not data:
                if pending:
                    raise UpstreamError("stream_cut", f"{name} stream ended inside a frame")
                return
            buffer.add_data(data)
            pending += len(data)
            try:
                frames = list(buffer)
            except ParserError as exc:
                raise UpstreamError("protocol", f"{name} sent a malformed event frame: {type(exc).__name__}") from exc
            for frame in frames:
                pending -= frame.prelude.total_length
                yield frame.headers, frame.payload
    finally:
        dog.close()
        resp.close() if not resp.content.at_eof() else resp.release()


class StreamTranslator:
    """Converse stream events in, chat chunks out, one event at a time.

    Content blocks count text and tool blocks together; OpenAI numbers tool calls on their own, so
    each toolUse block gets the next tool-call index when it starts.
    """

    def __init__(self, response_id: str, model: str, created: int, include_usage: bool) -> None:
        self.response_id = response_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.stopped = False  # messageStop seen: the answer is complete
        self.done = False  # metadata seen too: nothing more will come
        self._tool_index: dict[int, int] = {}

    def feed(self, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        handler = getattr(self, f"_on_{event}", None)
        return handler(data) if handler is not None else []  # contentBlockStop and future events

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.response_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def _on_messageStart(self, data: dict[str, Any]) -> list[dict[str, Any]]:  # noqa: N802 - AWS event names
        return [self._chunk({"role": "assistant", "content": ""})]

    def _on_contentBlockStart(self, data: dict[str, Any]) -> list[dict[str, Any]]:  # noqa: N802
        use = (data.get("start") or {}).get("toolUse")
        if not isinstance(use, dict):
            return []
        index = self._tool_index[data["contentBlockIndex"]] = len(self._tool_index)
        call = {"index": index, "id": use["toolUseId"], "type": "function",
                "function": {"name": use["name"], "arguments": ""}}
        return [self._chunk({"tool_calls": [call]})]

    def _on_contentBlockDelta(self, data: dict[str, Any]) -> list[dict[str, Any]]:  # noqa: N802
        delta = data.get("delta") or {}
        if delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        use = delta.get("toolUse")
        if isinstance(use, dict) and use.get("input"):
            index = self._tool_index.get(data.get("contentBlockIndex", -1))
            if index is None:
                return []
            return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": use["input"]}}]})]
        return []  # reasoning content has no chat counterpart

    def _on_messageStop(self, data: dict[str, Any]) -> list[dict[str, Any]]:  # noqa: N802
        self.stopped = True
        return [self._chunk({}, finish_reason(data.get("stopReason")) or "stop")]

    def _on_metadata(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.done = True
        if not self.include_usage or not isinstance(data.get("usage"), dict):
            return []
        return [{**self._chunk({}), "choices": [], "usage": usage(data["usage"])}]
