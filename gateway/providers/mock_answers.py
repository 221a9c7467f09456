"""What the mock provider answers, one ``Answer`` per choice: text, a tool call, or JSON. Pure, no I/O.

Chat, in order of precedence:

* function ``tools`` and ``tool_choice`` not ``none``, and the latest turn holds no tool result ->
  one call to the forced function (``tool_choice`` naming one, or the first of ``allowed_tools``),
  else the first tool, with arguments valid for its parameters schema (see ``mock_schema``);
* ``response_format`` ``json_schema`` -> JSON text valid for the schema; ``json_object`` -> a JSON
  object ``{"answer": <the text answer>}``;
* otherwise ``Mock answer to: <last user text>``, or after tool results
  ``Mock answer from <tool>: <its output>``.

Choice ``i`` > 0 says ``Mock answer <i+1> ...`` so ``n`` choices differ. Content is cut to
``max_tokens`` * 4 characters (finish reason ``length``); tool calls are never cut.
Everything is derived from the request body, so the same request always gets the same answer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from gateway.providers.mock_schema import placeholder
from gateway.tokens import text_tokens

MAX_CHOICES = 128
SOURCE_CHARS = 200


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class Answer:
    text: str | None  # content (None for a tool call)
    tool_call: ToolCall | None
    finish_reason: str  # stop | length | tool_calls

    @property
    def tokens(self) -> int:
        """Completion tokens, estimated as the gateway estimates everything (``gateway.tokens``)."""
        if self.tool_call is not None:
            return text_tokens(self.tool_call.name) + text_tokens(self.tool_call.arguments)
        return text_tokens(self.text or "")


def choice_count(body: dict) -> int:
    n = body.get("n")
    return min(n, MAX_CHOICES) if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def answers(body: dict, endpoint: str) -> list[Answer]:
    """The answers to a chat or completions request, one per choice."""
    return [_answer(body, endpoint, i) for i in range(choice_count(body))]


def _answer(body: dict, endpoint: str, index: int) -> Answer:
    if endpoint == "chat":
        tool = _forced_tool(body)
        if tool is not None:
            return Answer(None, _tool_call(body, tool, index), "tool_calls")
    label = "Mock answer" if index == 0 else f"Mock answer {index + 1}"
    if endpoint != "chat":
        text = f"{label} to: {str(body.get('prompt', ''))[:SOURCE_CHARS]}"
    else:
        results = _tool_results(_list(body.get("messages")))
        text = f"{label} from {results}" if results else f"{label} to: {_last_user_text(body)[:SOURCE_CHARS]}"
        text = _formatted(body.get("response_format"), text)
    return _trimmed(body, text)


def _trimmed(body: dict, text: str) -> Answer:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 and len(text) > limit * 4:
        return Answer(text[: limit * 4], None, "length")
    return Answer(text, None, "stop")


def _formatted(response_format: Any, text: str) -> str:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return json.dumps({"answer": text})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return json.dumps(placeholder(schema if isinstance(schema, dict) else {"type": "object"}))
    return text


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p)
    return ""


def _last_user_text(body: dict) -> str:
    for msg in reversed(_list(body.get("messages"))):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return _content_text(msg.get("content"))
    return ""


def _latest_turn(messages: list) -> list[dict]:
    """The messages after the last assistant message."""
    turn: list[dict] = []
    for msg in reversed(messages):
        if not isinstance(msg, dict) or msg.get("role") == "assistant":
            break
        turn.append(msg)
    return turn[::-1]


def _tool_results(messages: list) -> str:
    """``<tool>: <output>`` for each tool result in the latest turn, ``; ``-joined ('' when none)."""
    names: dict[str, str] = {}
    for msg in messages:
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            for call in _list(msg.get("tool_calls")):
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    names[str(call.get("id"))] = str(call["function"].get("name"))
    parts = [f"{names.get(str(m.get('tool_call_id')), 'tool')}: {_content_text(m.get('content'))[:SOURCE_CHARS]}"
             for m in _latest_turn(messages) if m.get("role") == "tool"]
    return "; ".join(parts)


def _forced_tool(body: dict) -> dict | None:
    """The function (``{name, parameters}``) this request gets a call to, or None for a text answer."""
    tools = [t["function"] for t in _list(body.get("tools"))
             if isinstance(t, dict) and t.get("type", "function") == "function"
             and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)]
    choice = body.get("tool_choice")
    if not tools or choice == "none" or _tool_results(_list(body.get("messages"))):
        return None
    wanted: list[str] = []
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = _dict(choice.get("function")).get("name")
        wanted = [name] if isinstance(name, str) else []
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = _list(_dict(choice.get("allowed_tools")).get("tools"))
        wanted = [_dict(t.get("function")).get("name") for t in allowed if isinstance(t, dict)]
    for name in wanted:
        match = next((t for t in tools if t["name"] == name), None)
        if match is not None:
            return match
    return tools[0]


def _tool_call(body: dict, tool: dict, index: int) -> ToolCall:
    args = placeholder(tool.get("parameters") or {"type": "object"})
    arguments = json.dumps(args if isinstance(args, dict) else {})
    seed = json.dumps([body.get("messages"), tool["name"], arguments, index], sort_keys=True, default=str)
    return ToolCall("call_" + hashlib.sha256(seed.encode()).hexdigest()[:24], tool["name"], arguments)
