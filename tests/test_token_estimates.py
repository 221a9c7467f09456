"""The prompt estimate counts tool schemas, tool calls and non-text parts by their compact JSON text."""

from __future__ import annotations

import orjson

from gateway.tokens import MESSAGE_OVERHEAD, REPLY_PRIMER, chat_prompt_tokens, json_tokens, text_tokens

TOOLS = [{"type": "function", "function": {"name": "read_file", "description": "Read a file from the workspace.",
                                           "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                                                          "required": ["path"]}}}]
CALLS = [{"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}]


def test_tools_and_calls_count_their_json_characters() -> None:
    body = {"messages": [{"role": "user", "content": "Read a.py"},
                         {"role": "assistant", "content": None, "tool_calls": CALLS}],
            "tools": TOOLS}
    expected = (REPLY_PRIMER + 2 * MESSAGE_OVERHEAD + text_tokens("Read a.py")
                + text_tokens(orjson.dumps(CALLS).decode()) + text_tokens(orjson.dumps(TOOLS).decode()))
    assert chat_prompt_tokens(body) == expected


def test_non_ascii_counts_characters_not_bytes() -> None:
    value = {"description": "日本語のツール" * 10}
    assert json_tokens(value) == text_tokens(orjson.dumps(value).decode()) < len(orjson.dumps(value)) // 4


def test_a_value_json_cannot_hold_falls_back_to_its_text() -> None:
    big = {"n": 2**70}  # past orjson's 64-bit integers
    assert json_tokens(big) == text_tokens(str(big))
