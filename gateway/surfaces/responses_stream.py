"""Chat completion chunks -> the Responses API's server-sent events, one chunk at a time.

The event order is the API's: ``response.created``, ``response.in_progress``, then each output item
whole (``output_item.added``, its content parts and deltas, their ``.done`` events,
``output_item.done``) before the next one starts, and last ``response.completed`` (or
``response.incomplete``/``response.failed``) carrying the whole response. Items follow the order
the deltas arrive in: a new kind of delta (reasoning, text, another tool call) closes the open item.
Providers send a tool call's fragments together (OpenAI, vLLM, the Anthropic adapter); a fragment
arriving after its call was closed still reaches the final response, but no delta event.

Failure is told by ``response.failed`` alone, whose ``response.error`` carries the code that clients
(Codex, the Agents SDK) classify; no ``error`` event comes first, which would stop some readers
before they reach the code.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.surfaces.responses_request import namespaced_tools
from gateway.surfaces.responses_response import (
    call_item,
    incomplete_reason,
    item_id,
    message_item,
    reasoning_item,
    reasoning_of,
    response_object,
    responses_usage,
)

_DELTA = {"output_text": "response.output_text.delta", "refusal": "response.refusal.delta",
          "reasoning_text": "response.reasoning_text.delta"}
_DONE = {"output_text": "response.output_text.done", "refusal": "response.refusal.done",
         "reasoning_text": "response.reasoning_text.done"}
_FIELD = {"output_text": "text", "refusal": "refusal", "reasoning_text": "text"}


def sse_frame(data: dict) -> bytes:
    """One server-sent event named by its ``type``."""
    return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class ResponsesStream:
    """Translates one chat completion stream into the events of one Responses stream."""

    def __init__(self, response_id: str, request: dict, created_at: int) -> None:
        self.response_id = response_id
        self.request = request
        self.created_at = created_at
        self._seq = -1
        self._started = False
        self._finished = False
        self._output: list[dict] = []
        self._open: int | None = None  # output index of the item being streamed
        self._part: str | None = None  # kind of its open content part (text items only)
        self._calls: dict[int, int] = {}  # chat tool call index -> output index
        self._namespaces = namespaced_tools(request)
        self._finish_reason: str | None = None
        self._usage: dict | None = None
        self._model: str | None = None
        self.final: dict | None = None  # the whole Response once the stream completed (for the store)

    def _event(self, kind: str, **fields: Any) -> bytes:
        self._seq += 1
        return sse_frame({"type": kind, "sequence_number": self._seq, **fields})

    def _response(self, status: str, **extra: Any) -> dict:
        return response_object(self.request, response_id=self.response_id, created_at=self.created_at,
                               status=status, output=self._output, usage=self._usage, model=self._model,
                               **extra)

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        opening = self._response("in_progress")
        return [self._event("response.created", response=opening),
                self._event("response.in_progress", response=opening)]

    def feed(self, chunk: dict) -> list[bytes]:
        """One ``chat.completion.chunk`` -> the events it completes (possibly none)."""
        frames = self._start()
        if self._finished:
            return frames
        if isinstance(chunk.get("model"), str):
            self._model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self._usage = responses_usage(chunk["usage"])
        choices = chunk.get("choices") or ()
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        reasoning = reasoning_of(delta)
        if reasoning:
            frames += self._text("reasoning", "reasoning_text", reasoning)
        for kind in ("content", "refusal"):
            if isinstance(delta.get(kind), str) and delta[kind]:
                frames += self._text("message", "output_text" if kind == "content" else kind, delta[kind])
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                frames += self._call(call)
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
        return frames

    def _open_item(self, item: dict) -> list[bytes]:
        frames = self._close_item("completed")
        self._open = len(self._output)
        self._output.append(item)
        return frames + [self._event("response.output_item.added", output_index=self._open, item=item)]

    def _text(self, kind: str, part: str, text: str) -> list[bytes]:
        """A text delta: opens the item (and the content part) it belongs to when it is not open yet."""
        frames: list[bytes] = []
        item = self._output[self._open] if self._open is not None else None
        if item is None or item["type"] != kind:
            n = len(self._output)
            opened = (reasoning_item(item_id("rs", self.response_id, n), "in_progress", "") if kind == "reasoning"
                      else message_item(item_id("msg", self.response_id, n), "in_progress", None))
            opened["content"] = []
            frames += self._open_item(opened)
            item = opened
        if self._part != part:
            frames += self._close_part()
            self._part = part
            empty = {"type": part, _FIELD[part]: ""}
            item["content"].append({**empty, "annotations": []} if part == "output_text" else empty)
            frames.append(self._event("response.content_part.added", **self._where(item), part=item["content"][-1]))
        item["content"][-1][_FIELD[part]] += text
        extra = {"logprobs": []} if part == "output_text" else {}
        frames.append(self._event(_DELTA[part], **self._where(item), delta=text, **extra))
        return frames

    def _where(self, item: dict) -> dict:
        return {"item_id": item["id"], "output_index": self._open, "content_index": len(item["content"]) - 1}

    def _close_part(self) -> list[bytes]:
        if self._part is None or self._open is None:
            return []
        item, part = self._output[self._open], self._part
        content = item["content"][-1]
        self._part = None
        extra = {"logprobs": []} if part == "output_text" else {}
        return [self._event(_DONE[part], **self._where(item), **{_FIELD[part]: content[_FIELD[part]]}, **extra),
                self._event("response.content_part.done", **self._where(item), part=content)]

    def _call(self, call: dict) -> list[bytes]:
        """A tool-call fragment. Its id and name come with its first fragment; a new id under a known
        index is a new call (some providers send every call as index 0)."""
        frames: list[bytes] = []
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        index = call.get("index") if isinstance(call.get("index"), int) else 0
        known = self._calls.get(index)
        if known is None or (call.get("id") and call["id"] != self._output[known]["call_id"]):
            n = len(self._output)
            call_id = call.get("id") or item_id("call", self.response_id, n)
            item = call_item(item_id("fc", self.response_id, n), "in_progress", call_id, fn.get("name") or "",
                             "", self._namespaces)
            frames += self._open_item(item)
            self._calls[index] = n
        item = self._output[self._calls[index]]
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            if self._open == self._calls[index]:
                frames.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                          output_index=self._open, delta=arguments))
        return frames

    def _close_item(self, status: str) -> list[bytes]:
        """Finish the open item: its part's ``.done`` events, then ``output_item.done``."""
        if self._open is None:
            return []
        frames = self._close_part()
        item = self._output[self._open]
        if item["type"] == "function_call":
            frames.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=self._open, arguments=item["arguments"]))
        item["status"] = status
        frames.append(self._event("response.output_item.done", output_index=self._open, item=item))
        self._open = None
        return frames

    def close(self) -> list[bytes]:
        """The upstream stream ended: finish the open item, then ``response.completed`` (or
        ``response.incomplete`` when the answer was cut by the token limit or a content filter)."""
        frames = self._start()
        if self._finished:
            return frames
        self._finished = True
        reason = incomplete_reason(self._finish_reason)
        frames += self._close_item("incomplete" if reason else "completed")
        if reason:
            self.final = self._response("incomplete", reason=reason)
            return frames + [self._event("response.incomplete", response=self.final)]
        self.final = self._response("completed")
        return frames + [self._event("response.completed", response=self.final)]

    def fail(self, code: str, message: str) -> list[bytes]:
        """The upstream failed mid-stream: ``response.failed`` with the error and the output so far.
        ``code`` should be one of the API's (``server_error``, ``rate_limit_exceeded``...)."""
        frames = self._start()
        if self._finished:
            return frames
        self._finished = True
        if self._open is not None:
            self._output[self._open]["status"] = "incomplete"
        error = {"code": code, "message": message}
        return frames + [self._event("response.failed", response=self._response("failed", error=error))]
