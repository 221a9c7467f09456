"""The internal chat answer -> an Anthropic Message: whole (``chat_to_message``) or streamed
(``MessagesStream`` in ``anthropic_stream``, which shares the mappings below). Pure, no I/O.

Decisions:

* Reasoning text (``reasoning_content`` as DeepSeek and vLLM send it, or ``reasoning``) becomes a
  leading ``thinking`` block with an empty ``signature``: clients show it, and sending it back is
  harmless because the request side drops thinking blocks anyway.
* Tool arguments that are not a JSON object become ``input: {}``: Anthropic's ``input`` must be an
  object, and the client's own input validation then reports the missing fields to the model, which
  can retry; the streamed form forwards the arguments text as it came.
* ``stop_sequence`` is only claimed when the provider says which stop string matched (vLLM's
  ``choices[].stop_reason``) and it is one of the request's ``stop_sequences``; OpenAI strips the
  stop string and never says, so otherwise the answer is ``end_turn``.
* Usage: OpenAI's ``prompt_tokens`` includes cached tokens, Anthropic's ``input_tokens`` does not:
  cached tokens move to ``cache_read_input_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import getrandbits
from typing import Any

import orjson

FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def new_message_id() -> str:
    """An id, not a secret (nothing is looked up by it): ``random``, not an ``os.urandom`` call per answer."""
    return f"msg_{getrandbits(96):024x}"


def new_tool_id() -> str:
    return f"toolu_{getrandbits(96):024x}"


def stop_reason(finish: str | None, *, tool_used: bool = False, refused: bool = False,
                matched: Any = None, stop_sequences: Sequence[str] = ()) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for a chat ``finish_reason`` (None when a stream just ended)."""
    if refused and finish in (None, "stop", "content_filter"):
        return "refusal", None
    if finish in (None, "stop") and tool_used:
        return "tool_use", None  # some providers end a tool-calling turn with "stop"
    if finish == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return FINISH_TO_STOP.get(finish or "stop", "end_turn"), None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def message_usage(usage: Any) -> dict[str, int]:
    """Anthropic usage from chat usage (cached input counted apart, as Anthropic does)."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = _count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    cached = min(cached or _count(usage.get("prompt_cache_hit_tokens")), prompt)  # DeepSeek names it so
    return {
        "input_tokens": prompt - cached,
        "output_tokens": _count(usage.get("completion_tokens")),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def reasoning_of(message: dict[str, Any]) -> str:
    for key in ("reasoning_content", "reasoning"):
        if isinstance(message.get(key), str) and message[key]:
            return message[key]
    return ""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # a few providers answer with text parts
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def tool_input(arguments: Any) -> dict[str, Any]:
    """Parsed tool arguments; anything but a JSON object is ``{}`` (see the module doc)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str | bytes) and arguments else None
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _tool_blocks(calls: Any) -> list[dict[str, Any]]:
    blocks = []
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        blocks.append({
            "type": "tool_use",
            "id": call.get("id") or new_tool_id(),
            "name": fn.get("name") or "",
            "input": tool_input(fn.get("arguments")),
        })
    return blocks


def chat_to_message(chat: dict[str, Any], model: str, *, stop_sequences: Sequence[str] = (),
                    message_id: str | None = None) -> dict[str, Any]:
    """A ``chat.completion`` as an Anthropic Message for ``model`` (the name the client asked for)."""
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _text(message.get("content"))
    refusal = message.get("refusal") if isinstance(message.get("refusal"), str) else ""
    if text or refusal:
        content.append({"type": "text", "text": text or refusal})
    tools = _tool_blocks(message.get("tool_calls"))
    content.extend(tools)
    reason, sequence = stop_reason(choice.get("finish_reason"), tool_used=bool(tools), refused=bool(refusal),
                                   matched=choice.get("stop_reason"), stop_sequences=stop_sequences)
    return {
        "id": message_id or new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": message_usage(chat.get("usage")),
    }
