"""Gemini ``streamGenerateContent?alt=sse`` -> OpenAI ``chat.completion.chunk`` payloads.

Each SSE event is a whole ``GenerateContentResponse`` holding the new parts of each candidate; the
stream has no end marker, so it ends cleanly only if a candidate said its ``finishReason`` (a stream
that stops before that was cut). Function calls arrive whole, each becoming one tool-call delta with
its complete arguments. ``usageMetadata`` is cumulative: the last one seen is the answer's usage.
"""

from __future__ import annotations

from typing import Any

from orjson import dumps

from gateway.providers.gemini_answer import FINISH_REASONS, call_id, finish_reason, google_error, usage


class StreamFailed(Exception):
    """An error object inside a 200 stream, or a prompt blocked before any candidate."""


class StreamTranslator:
    def __init__(self, model: str, response_id: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.id = response_id
        self.created = created
        self.include_usage = include_usage
        self.finished = False  # a finishReason (or a prompt block) was seen
        self._usage: dict[str, Any] | None = None
        self._started: set[int] = set()
        self._calls: dict[int, int] = {}  # candidate index -> tool calls so far

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def feed(self, data: Any) -> list[dict[str, Any]]:
        err = google_error(data)
        if err is not None:
            raise StreamFailed(f"{err.get('status', 'error')}: {err.get('message', '')}")
        if not isinstance(data, dict):
            raise TypeError("a stream event must be an object")
        if data.get("usageMetadata"):
            self._usage = data["usageMetadata"]
        if not self._started:  # the first event names the answer; later ones must not rename it
            self.id = data.get("responseId") or self.id
            self.model = data.get("modelVersion") or self.model
        out: list[dict[str, Any]] = []
        block = (data.get("promptFeedback") or {}).get("blockReason")
        if block and not data.get("candidates"):
            self.finished = True
            return [self._chunk(0, {"role": "assistant", "content": ""}, "content_filter")]
        for pos, cand in enumerate(data.get("candidates") or []):
            out.extend(self._candidate(cand.get("index", pos), cand))
        return out

    def _candidate(self, index: int, cand: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if index not in self._started:
            self._started.add(index)
            out.append(self._chunk(index, {"role": "assistant", "content": ""}))
        for part in ((cand.get("content") or {}).get("parts")) or []:
            if part.get("thought"):
                continue
            if isinstance(part.get("text"), str) and part["text"]:
                out.append(self._chunk(index, {"content": part["text"]}))
            elif isinstance(part.get("functionCall"), dict):
                n = self._calls.get(index, 0)
                self._calls[index] = n + 1
                fn = part["functionCall"]
                call = {"index": n, "id": call_id(part, n), "type": "function",
                        "function": {"name": fn.get("name"), "arguments": dumps(fn.get("args") or {}).decode()}}
                out.append(self._chunk(index, {"tool_calls": [call]}))
        reason = cand.get("finishReason")
        if reason and reason != "FINISH_REASON_UNSPECIFIED":
            self.finished = True
            mapped = finish_reason(reason, self._calls.get(index, 0) > 0) or FINISH_REASONS.get(reason, "stop")
            out.append(self._chunk(index, {}, mapped))
        return out

    def end(self) -> list[dict[str, Any]]:
        """At a clean end of stream: the usage chunk, when the client asked for one."""
        if not self.include_usage:
            return []
        return [{**self._chunk(0, {}), "choices": [], "usage": usage(self._usage)}]
