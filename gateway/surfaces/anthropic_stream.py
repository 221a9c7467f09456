"""Streamed chat (``chat.completion.chunk``s) -> Anthropic Messages server-sent events. Pure, no I/O.

The event order is Anthropic's: ``message_start``, ``ping``, then per content block in order
``content_block_start``, ``content_block_delta``..., ``content_block_stop``, then ``message_delta``
(stop reason, usage) and ``message_stop``. A block starts when the kind of delta changes (reasoning ->
``thinking``, content -> ``text``, tool call -> ``tool_use``) or a new tool call index starts, and
ends at the next block or at ``finish_reason``; ``message_delta`` waits for ``close()`` because the
usage-only chunk (``stream_options.include_usage``) comes after the finish.

A tool_use block starts once its name is known: arguments that come before it are held and sent
with the start. Anthropic blocks cannot reopen, so deltas for a tool call whose block already ended
are ignored (OpenAI-style providers send tool calls one after another, never interleaved).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.surfaces.anthropic_errors import CHARS_PER_TOKEN, error_payload
from gateway.surfaces.anthropic_response import message_usage, new_tool_id, reasoning_of, stop_reason


def frame(event: str, data: dict[str, Any]) -> bytes:
    """One complete SSE frame."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@dataclass
class _Tool:
    key: Any  # the chat tool call ``index``
    id: str
    name: str = ""
    started: bool = False
    held: list[str] = field(default_factory=list)  # arguments received before the name


class MessagesStream:
    """Turns one chat completion stream into one Anthropic message stream.

    ``input_tokens`` is the estimate shown in ``message_start``; the real count from the final usage
    chunk goes into ``message_delta`` (clients keep the last value they see).
    """

    def __init__(self, model: str, message_id: str, input_tokens: int, *,
                 stop_sequences: Sequence[str] = ()) -> None:
        self._model = model
        self._id = message_id
        self._input_estimate = input_tokens
        self._stops = tuple(stop_sequences)
        self._started = self._done = False
        self._index = -1  # index of the newest content block
        self._open: str | None = None  # kind of the open block: text | thinking | tool
        self._tool: _Tool | None = None
        self._ended_tools: set[Any] = set()
        self._finish: str | None = None
        self._matched: Any = None
        self._refused = self._tool_used = False
        self._usage: dict[str, Any] | None = None
        self._chars = 0

    # --- public ------------------------------------------------------------------------------------
    def start(self) -> list[bytes]:
        """``message_start`` and ``ping``, once (``feed`` calls it; call it early to flush headers)."""
        if self._started:
            return []
        self._started = True
        usage = {"input_tokens": self._input_estimate, "output_tokens": 0,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        message = {"id": self._id, "type": "message", "role": "assistant", "model": self._model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": usage}
        return [frame("message_start", {"type": "message_start", "message": message}), self.ping()]

    @staticmethod
    def ping() -> bytes:
        """A keep-alive event, as Anthropic sends while the model is busy."""
        return frame("ping", {"type": "ping"})

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """The events for one chat chunk (often none: a role-only or usage-only chunk)."""
        if self._done:
            return []
        out = self.start()
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n > 1 has no Anthropic form; the request side never asks for it
            delta = choice.get("delta")
            if isinstance(delta, dict):
                out += self._delta(delta)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
                self._matched = choice.get("stop_reason")
                out += self._end_block()
        return out

    def close(self) -> list[bytes]:
        """End the message: the open block's stop, ``message_delta`` and ``message_stop``."""
        if self._done:
            return []
        out = self.start() + self._end_block()
        self._done = True
        reason, sequence = stop_reason(self._finish, tool_used=self._tool_used, refused=self._refused,
                                       matched=self._matched, stop_sequences=self._stops)
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        out.append(frame("message_delta", {"type": "message_delta", "delta": delta, "usage": self.usage()}))
        out.append(frame("message_stop", {"type": "message_stop"}))
        return out

    def fail(self, type: str, message: str) -> bytes:
        """An ``error`` event: the stream broke mid-way; nothing may follow it."""
        self._done = True
        return frame("error", error_payload(type, message))

    def usage(self) -> dict[str, int]:
        """Usage so far: the provider's when it reported some, else estimated output tokens."""
        if self._usage is not None:
            return message_usage(self._usage)
        return {"output_tokens": -(-self._chars // CHARS_PER_TOKEN)}

    # --- blocks ------------------------------------------------------------------------------------
    def _delta(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        reasoning = reasoning_of(delta)
        if reasoning:
            out += self._text("thinking", reasoning)
        for key in ("content", "refusal"):
            if isinstance(delta.get(key), str) and delta[key]:
                self._refused = self._refused or key == "refusal"
                out += self._text("text", delta[key])
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                out += self._tool_delta(call, position)
        return out

    def _begin(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._end_block()
        self._open = kind
        self._index += 1
        return [*out, frame("content_block_start",
                            {"type": "content_block_start", "index": self._index, "content_block": block})]

    def _block_delta(self, delta: dict[str, Any]) -> bytes:
        return frame("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})

    def _end_block(self) -> list[bytes]:
        if self._open is None:
            return []
        out: list[bytes] = []
        if self._open == "tool" and self._tool is not None:
            if not self._tool.started:
                out += self._start_tool(self._tool)  # the name never came; the block still must exist
            self._ended_tools.add(self._tool.key)
            self._tool = None
        self._open = None
        out.append(frame("content_block_stop", {"type": "content_block_stop", "index": self._index}))
        return out

    def _text(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open != kind:
            block = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "",
                                                                         "signature": ""}
            out += self._begin(kind, block)
        self._chars += len(text)
        delta = {"type": "text_delta", "text": text} if kind == "text" else {"type": "thinking_delta",
                                                                             "thinking": text}
        out.append(self._block_delta(delta))
        return out

    def _tool_delta(self, call: dict[str, Any], position: int) -> list[bytes]:
        key = call.get("index", position)
        if key in self._ended_tools:
            return []
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        out: list[bytes] = []
        tool = self._tool
        if self._open != "tool" or tool is None or tool.key != key:
            out += self._end_block()
            tool = self._tool = _Tool(key, "")
            self._open = "tool"  # started for real (index, start event) once the name is known
        if not tool.started:
            tool.id = tool.id or (call.get("id") if isinstance(call.get("id"), str) else "")
            if isinstance(fn.get("name"), str):
                tool.name += fn["name"]
        args = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
        self._chars += len(args)
        if tool.started:
            if args:
                out.append(self._block_delta({"type": "input_json_delta", "partial_json": args}))
        else:
            tool.held.append(args)
            if tool.name:
                out += self._start_tool(tool)
        return out

    def _start_tool(self, tool: _Tool) -> list[bytes]:
        self._open = None  # _begin must not end this very block
        block = {"type": "tool_use", "id": tool.id or new_tool_id(), "name": tool.name, "input": {}}
        out = self._begin("tool", block)
        tool.started, self._tool_used = True, True
        held, tool.held = "".join(tool.held), []
        if held:
            out.append(self._block_delta({"type": "input_json_delta", "partial_json": held}))
        return out
