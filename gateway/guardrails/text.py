"""The text a guardrail reads: user-written strings of a request, and the text of an answer.

Structural strings (roles, ids, types, tool names, URLs and signatures) are neither checked nor
rewritten, so a deny pattern never matches ``"user"`` and a redaction never breaks a tool call id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

REQUEST_FIELDS = ("messages", "prompt", "input", "instructions", "system")
STRUCTURAL = frozenset({"role", "type", "id", "tool_call_id", "call_id", "name", "url", "image_url", "signature",
                        "data", "media_type", "cache_control", "detail", "file_id", "status"})
Rewrite = Callable[[str], str]


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in STRUCTURAL:
                yield from _strings(item)


def _rewrite(value: Any, fn: Rewrite) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_rewrite(item, fn) for item in value]
    if isinstance(value, dict):
        return {k: v if k in STRUCTURAL else _rewrite(v, fn) for k, v in value.items()}
    return value


def request_text(body: dict[str, Any]) -> str:
    """Every user-written string of a request (any surface's form), one per line."""
    return "\n".join(s for name in REQUEST_FIELDS if name in body for s in _strings(body[name]))


def rewrite_request(body: dict[str, Any], fn: Rewrite) -> tuple[dict[str, Any], bool]:
    """A copy of ``body`` with ``fn`` applied to its user-written strings; True when anything changed."""
    out = dict(body)
    for name in REQUEST_FIELDS:
        if name in body:
            out[name] = _rewrite(body[name], fn)
    changed = any(out[n] != body[n] for n in REQUEST_FIELDS if n in body)
    return (out, True) if changed else (body, False)


def answer_text(data: Any) -> str:
    """The text of a chat (or completions) answer: message contents and tool-call arguments."""
    parts: list[str] = []
    for choice in data.get("choices") or () if isinstance(data, dict) else ():
        message = choice.get("message") or {}
        content = message.get("content") if message else choice.get("text")
        if isinstance(content, str):
            parts.append(content)
        for call in message.get("tool_calls") or ():
            parts.append(str((call.get("function") or {}).get("arguments") or ""))
    return "\n".join(parts)


def replace_answer(data: dict[str, Any], text: str) -> dict[str, Any]:
    """The answer with its first choice's text replaced by ``text`` (a redacted or modified answer)."""
    choices = [dict(c) for c in data.get("choices") or ()]
    if choices:
        first = choices[0]
        if isinstance(first.get("message"), dict):
            first["message"] = {**first["message"], "content": text}
        else:
            first["text"] = text
    return {**data, "choices": choices}


def replace_stream_text(payloads: list[bytes], text: str) -> list[bytes]:
    """Held stream chunks with their text replaced: the first text chunk carries ``text``, the rest none."""
    out: list[bytes] = []
    placed = False
    for payload in payloads:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            out.append(payload)
            continue
        touched = False
        for choice in data.get("choices") or ():
            delta = choice.get("delta")
            key, holder = ("content", delta) if isinstance(delta, dict) else ("text", choice)
            if isinstance(holder.get(key), str):
                holder[key] = "" if placed else text
                placed = touched = True
        out.append(orjson.dumps(data) if touched else payload)
    return out
