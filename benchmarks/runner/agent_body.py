"""Agent-sized request bodies: what a coding agent (Claude Code, Codex) sends on every turn.

A turn carries the agent's whole tool set (two dozen JSON schemas with long descriptions), a long
system prompt and the conversation so far: ~100-120 KB where the other scenarios send ~70 bytes. What
scales with the body (parsing, checks, estimates, translation, forwarding) shows here and nowhere else.
Deterministic text without quotes or backslashes, so the body sits in wrk's Lua script as it is.
"""

from __future__ import annotations

import json

TEXT = ("read the file and check each function for the bug then run the tests again before you edit "
        "anything in the parser module keep the change small and explain what you found in one line")
WORDS = TEXT.split(" ")
TOOLS = 24
TURNS = 100


def _text(chars: int, seed: int) -> str:
    out: list[str] = []
    n, i = 0, seed
    while n < chars:
        word = WORDS[i % len(WORDS)]
        out.append(word)
        n += len(word) + 1
        i += 7
    return " ".join(out)


def _schema(i: int) -> dict:
    props = {f"arg_{j}": {"type": "string", "description": _text(120, i * 31 + j)} for j in range(8)}
    return {"type": "object", "properties": props, "required": ["arg_0", "arg_1"]}


def _turns() -> list[dict]:
    return [{"role": "user" if k % 2 == 0 else "assistant", "content": _text(330, k)} for k in range(TURNS)]


def _dumps(body: dict) -> str:
    text = json.dumps(body, separators=(",", ":"))
    assert "'" not in text and "\\" not in text
    return text


def agent_chat() -> str:
    """An OpenAI chat request: function tools, a system message and the conversation (~120 KB)."""
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "description": _text(1500, i),
                                               "parameters": _schema(i)}} for i in range(TOOLS)]
    messages = [{"role": "system", "content": _text(20_000, 3)}, *_turns()]
    return _dumps({"model": "m", "max_tokens": 1024, "messages": messages, "tools": tools})


def agent_messages() -> str:
    """The same turn as an Anthropic Messages request (top-level ``system``, ``input_schema`` tools)."""
    tools = [{"name": f"tool_{i}", "description": _text(1500, i), "input_schema": _schema(i)} for i in range(TOOLS)]
    return _dumps({"model": "m", "max_tokens": 1024, "system": _text(20_000, 3), "messages": _turns(),
                   "tools": tools})
