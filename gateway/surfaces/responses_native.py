"""Usage of a Responses answer that a provider served itself (the body forwarded untouched).

The gateway meters in chat terms (``prompt_tokens``, ``completion_tokens`` and their details), so
usage is read from the Responses form into that one; a stream that ends without usage (cut, or a
client that left) is charged by estimate from the characters generated, as on the chat path.
"""

from __future__ import annotations

from typing import Any

from gateway.surfaces.base import rewrite_frames

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Deltas of generated text: the answer and tool-call arguments, what the chat path counts too.
_GENERATED = frozenset({"response.output_text.delta", "response.refusal.delta",
                        "response.function_call_arguments.delta", "response.custom_tool_call_input.delta"})


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def chat_usage(usage: Any) -> dict | None:
    """Responses usage -> chat usage, or None when there is none."""
    if not isinstance(usage, dict):
        return None
    inputs = usage.get("input_tokens_details") or {}
    outputs = usage.get("output_tokens_details") or {}
    prompt, completion = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _int(usage.get("total_tokens")) or prompt + completion,
        "prompt_tokens_details": {"cached_tokens": _int(inputs.get("cached_tokens"))},
        "completion_tokens_details": {"reasoning_tokens": _int(outputs.get("reasoning_tokens"))},
    }


def usage_of_response(resp: dict) -> dict | None:
    """The usage of a whole Response object, in chat form (None when it carries none)."""
    return chat_usage(resp.get("usage")) if isinstance(resp, dict) else None


def generated_chars(resp: dict) -> int:
    """Characters generated in a whole Response (text, refusals, call arguments): the estimate's base."""
    n = 0
    for item in resp.get("output") or () if isinstance(resp, dict) else ():
        if not isinstance(item, dict):
            continue
        n += len(item.get("arguments") or "") if isinstance(item.get("arguments"), str) else 0
        for part in item.get("content") or () if item.get("type") == "message" else ():
            if isinstance(part, dict):
                n += len(part.get("text") or part.get("refusal") or "")
    return n


class NativeStreamUsage:
    """Reads a forwarded Responses stream, event by event, for its usage and generated characters."""

    def __init__(self) -> None:
        self.usage: dict | None = None  # chat form, from the terminal event
        self.generated_chars = 0
        self.status: str | None = None  # the terminal status, None while the stream has not ended

    def feed(self, event_type: str | None, data: dict) -> None:
        """One event; ``event_type`` is the SSE ``event:`` name, or None to read the data's ``type``."""
        if not isinstance(data, dict):
            return
        kind = event_type or data.get("type")
        if kind in _GENERATED and isinstance(data.get("delta"), str):
            self.generated_chars += len(data["delta"])
        elif kind in _TERMINAL and isinstance(data.get("response"), dict):
            self.status = data["response"].get("status") or kind.removeprefix("response.")
            usage = usage_of_response(data["response"])
            if usage is not None:
                self.usage = usage


def _text_parts(output: Any) -> list[dict]:
    """The ``output_text`` parts of a list of output items, in order."""
    items = output if isinstance(output, list) else []
    return [part for item in items if isinstance(item, dict) and item.get("type") == "message"
            for part in item.get("content") or () if isinstance(part, dict) and part.get("type") == "output_text"]


def _rewrite_event(event: dict, text: str, placed: set[str]) -> bool:
    """Put ``text`` in the first text slot of each kind of event and empty the others; True if touched."""
    kind = str(event.get("type"))

    def first() -> str:
        value = "" if kind in placed else text
        placed.add(kind)
        return value

    part = event.get("part")
    if kind == "response.output_text.delta":
        event["delta"] = first()
    elif kind == "response.output_text.done":
        event["text"] = first()
    elif kind == "response.content_part.done" and isinstance(part, dict) and part.get("type") == "output_text":
        part["text"] = first()
    elif kind == "response.output_item.done" and (parts := _text_parts([event.get("item")])):
        for found in parts:
            found["text"] = first()
    elif kind in _TERMINAL and isinstance(event.get("response"), dict):
        place_text(event["response"], text)
    else:
        return False
    return True


def place_text(response: dict, text: str) -> None:
    """A whole Response's text replaced: its first ``output_text`` part holds ``text``, the others none."""
    for i, part in enumerate(_text_parts(response.get("output"))):
        part["text"] = text if i == 0 else ""


def replace_text(frames: list[bytes], text: str) -> list[bytes]:
    """Responses stream frames with their text replaced (a held answer a guardrail redacted): deltas,
    ``done`` events and the final Response alike. Every other frame is kept byte for byte."""
    placed: set[str] = set()
    return rewrite_frames(frames, lambda event: isinstance(event, dict) and _rewrite_event(event, text, placed))
