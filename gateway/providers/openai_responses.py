"""A Responses API answer read back into the internal chat form, for deployments that serve /v1/responses.

On the lossless path the client's Responses body goes to the deployment as is and its answer goes back
untouched (``NativeAnswer``); the pipeline still needs the answer in chat form to meter usage, cache
and audit it. This is that reading: a whole Response to a ``chat.completion``, and stream events to
``chat.completion.chunk``s. No I/O.
"""

from __future__ import annotations

from typing import Any


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """Responses usage -> chat usage (cached and reasoning details kept)."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(cached)},
            "completion_tokens_details": {"reasoning_tokens": int(reasoning)}}


def finish_of(response: dict[str, Any], called: bool) -> str:
    reason = (response.get("incomplete_details") or {}).get("reason")
    if response.get("status") == "incomplete":
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if called else "stop"


def response_to_chat(response: dict[str, Any]) -> dict[str, Any]:
    """A whole Response -> a ``chat.completion`` with its text, tool calls and usage."""
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            text += [p.get("text", "") for p in item.get("content") or () if p.get("type") == "output_text"]
        elif item.get("type") == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return {"id": response.get("id"), "object": "chat.completion", "created": response.get("created_at") or 0,
            "model": response.get("model"), "usage": chat_usage(response.get("usage")),
            "choices": [{"index": 0, "message": message, "finish_reason": finish_of(response, bool(calls))}]}


class StreamFailed(Exception):
    """``response.failed`` or an ``error`` event inside a 200 stream."""


class EventsToChunks:
    """Responses stream events in, ``chat.completion.chunk`` payloads out, one event at a time."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.done = False
        self.final: dict[str, Any] | None = None  # the whole Response from the last event
        self._base: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "created": 0, "model": None}
        self._tools: dict[int, int] = {}  # output_index -> tool call index

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**self._base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def feed(self, kind: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        if kind == "response.created":
            response = data.get("response") or {}
            self._base.update(id=response.get("id", ""), created=response.get("created_at") or 0,
                              model=response.get("model"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "response.output_text.delta":
            return [self._chunk({"content": data.get("delta") or ""})]
        if kind == "response.output_item.added":
            return self._call_start(data)
        if kind == "response.function_call_arguments.delta":
            index = self._tools.get(data.get("output_index", -1))
            if index is None:
                return []
            return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": data.get("delta") or ""}}]})]
        if kind in ("response.completed", "response.incomplete"):
            return self._finish(data.get("response") or {})
        if kind in ("response.failed", "error"):
            error = (data.get("response") or {}).get("error") or data
            raise StreamFailed(str(error.get("message") or "the deployment failed the response"))
        return []

    def _call_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        item = data.get("item") or {}
        if item.get("type") != "function_call":
            return []
        index = self._tools[data.get("output_index", len(self._tools))] = len(self._tools)
        call = {"index": index, "id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": ""}}
        return [self._chunk({"tool_calls": [call]})]

    def _finish(self, response: dict[str, Any]) -> list[dict[str, Any]]:
        self.done, self.final = True, response
        out = [self._chunk({}, finish_of(response, bool(self._tools)))]
        usage = chat_usage(response.get("usage"))
        if self.include_usage and usage is not None:
            out.append({**self._base, "choices": [], "usage": usage})
        return out
