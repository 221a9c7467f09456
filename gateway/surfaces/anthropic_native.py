"""Usage of Anthropic-native answers, for the lossless path (the provider is Anthropic and the body is
forwarded untouched): the gateway still has to meter tokens, settle budgets and log, without
translating anything. Pure, no I/O.

Anthropic counts ``input_tokens`` without cached tokens; ``chat_usage`` gives the gateway's OpenAI-shaped
usage (``prompt_tokens`` includes cache reads and writes) so accounting stays one shape.
"""

from __future__ import annotations

from typing import Any

from gateway.surfaces.anthropic_errors import CHARS_PER_TOKEN
from gateway.surfaces.base import rewrite_frames

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
# The delta fields that carry generated text, by delta type.
_DELTA_TEXT = {"text_delta": "text", "input_json_delta": "partial_json", "thinking_delta": "thinking"}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_of_message(msg: dict[str, Any]) -> dict[str, int]:
    """The four token counts of a whole Message (0 when absent)."""
    usage = msg.get("usage") if isinstance(msg, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    return {name: _count(usage.get(name)) or 0 for name in USAGE_FIELDS}


def chat_usage(usage: dict[str, int]) -> dict[str, Any]:
    """Anthropic usage in the OpenAI shape the gateway meters (cached input inside ``prompt_tokens``)."""
    cached = usage.get("cache_read_input_tokens", 0)
    prompt = usage.get("input_tokens", 0) + usage.get("cache_creation_input_tokens", 0) + cached
    completion = usage.get("output_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


class NativeStreamUsage:
    """Follows an Anthropic event stream: the reported usage, the stop reason, and the characters
    generated so far (for an estimate when the stream is cut before ``message_delta``)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(USAGE_FIELDS, 0)
        self.reported = False  # a message_delta came: output_tokens is final
        self.stop_reason: str | None = None
        self.chars = 0

    def feed(self, event: str, data: dict[str, Any]) -> None:
        """One parsed SSE event (``event`` name, ``data`` JSON); unknown events are ignored."""
        kind = data.get("type") or event
        if kind == "message_start":
            message = data.get("message")
            self._merge(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "message_delta":
            self._merge(data.get("usage"))  # cumulative counts: the newest wins
            self.reported = True
            delta = data.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.stop_reason = delta["stop_reason"]
        elif kind == "content_block_delta":
            delta = data.get("delta")
            field = _DELTA_TEXT.get(delta.get("type")) if isinstance(delta, dict) else None
            if field and isinstance(delta.get(field), str):
                self.chars += len(delta[field])

    def _merge(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for name in USAGE_FIELDS:
            value = _count(usage.get(name))
            if value is not None:
                self.counts[name] = value

    def estimated_output_tokens(self) -> int:
        return -(-self.chars // CHARS_PER_TOKEN)

    def usage(self) -> dict[str, int]:
        """The reported counts; output tokens estimated from the text when no ``message_delta`` came."""
        counts = dict(self.counts)
        if not self.reported:
            counts["output_tokens"] = max(counts["output_tokens"], self.estimated_output_tokens())
        return counts


def replace_text(frames: list[bytes], text: str) -> list[bytes]:
    """Anthropic stream frames with their text replaced: the first ``text_delta`` carries ``text``, the
    others none (a held answer a guardrail redacted). Every other frame is kept byte for byte."""
    placed = False

    def edit(event: Any) -> bool:
        nonlocal placed
        delta = event.get("delta") if isinstance(event, dict) and event.get("type") == "content_block_delta" else None
        if not (isinstance(delta, dict) and delta.get("type") == "text_delta"):
            return False
        delta["text"] = "" if placed else text
        placed = True
        return True

    return rewrite_frames(frames, edit)
