"""Cheap token estimates for admission (limits, budgets, context checks) and for unreported usage.

Heuristic, documented: ~4 characters per token for text (the usual figure for English with BPE
tokenizers), plus 4 tokens of framing per chat message and 3 for the reply primer; an image part
counts a flat 765 tokens (a high-detail 512px tile set). Tool definitions, tool calls and non-text
parts count the characters of their compact JSON (what a provider renders them as; ``str()`` of a
coding agent's 24 tool schemas took ~330 us a request, JSON ~15). It over-estimates code slightly and
under-estimates some non-Latin scripts; real usage from the provider always replaces it when known.
"""

from __future__ import annotations

from typing import Any

import orjson

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
REPLY_PRIMER = 3
IMAGE_TOKENS = 765


def text_tokens(text: str) -> int:
    """Estimated tokens of a text: ceil(len/4), at least 1 for non-empty text."""
    n = len(text)
    return (n + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def json_tokens(value: Any) -> int:
    """Estimated tokens of a structured value: its compact JSON text's characters."""
    try:
        encoded = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):  # not JSON (an int past 64 bits): its Python text
        return text_tokens(str(value))
    n = len(encoded) if encoded.isascii() else len(encoded.decode())  # characters: decoding costs ~10x the check
    return (n + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "text":
                total += text_tokens(str(part.get("text", "")))
            elif kind in ("image_url", "input_image", "image"):
                total += IMAGE_TOKENS
            else:
                total += json_tokens(part)
        return total
    return 0


def chat_prompt_tokens(body: dict[str, Any]) -> int:
    """Estimate prompt tokens of a chat request (messages, plus tool definitions)."""
    total = REPLY_PRIMER
    for msg in body.get("messages") or ():
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        # text, the common content, by ``text_tokens``' rule in place (no two calls a message); else its parts
        total += MESSAGE_OVERHEAD + ((len(content) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
                                     if type(content) is str else _content_tokens(content))
        calls = msg.get("tool_calls")
        if calls:
            total += json_tokens(calls)
    tools = body.get("tools")
    if tools:
        total += json_tokens(tools)
    return total


def prompt_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """Estimate prompt tokens for any endpoint."""
    if endpoint == "chat":
        return chat_prompt_tokens(body)
    field = body.get("prompt") if endpoint == "completions" else body.get("input")
    if isinstance(field, str):
        return text_tokens(field)
    if isinstance(field, list):
        return sum(text_tokens(x) if isinstance(x, str) else len(x) if isinstance(x, list) else 1 for x in field)
    return 0
