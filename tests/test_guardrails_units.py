"""Pure guardrail logic: the JSON Schema subset, request and answer text, local checks and verdicts."""

from __future__ import annotations

import re

import orjson
import pytest

from gateway.guardrails.checks import check_deny, check_json, check_pii, check_size, expected_schema
from gateway.guardrails.schema import problem
from gateway.guardrails.text import (
    answer_text,
    replace_answer,
    replace_stream_text,
    request_text,
    rewrite_request,
)
from gateway.guardrails.webhook import verdict_of
from gateway.guardrails.windows import Windows
from gateway.observability.redact import Redactor
from gateway.policy.model import Guardrail
from gateway.surfaces.anthropic_native import replace_text

SCHEMA = {"type": "object", "required": ["city", "tags"], "additionalProperties": False,
          "properties": {"city": {"type": "string", "minLength": 2}, "celsius": {"type": ["number", "null"]},
                         "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "maxItems": 2}},
          "$defs": {"tag": {"enum": ["sun", "rain"]}}}


@pytest.mark.parametrize(("value", "found"), [
    ({"city": "Oslo", "tags": ["sun"]}, None),
    ({"city": "Oslo", "tags": [], "celsius": None}, None),
    ({"city": "Oslo"}, "$: missing required property 'tags'"),
    ({"city": "O", "tags": []}, "$.city: shorter than 2"),
    ({"city": "Oslo", "tags": ["snow"]}, "$.tags[0]: not one of the allowed values"),
    ({"city": "Oslo", "tags": ["sun", "sun", "rain"]}, "$.tags: more than 2 items"),
    ({"city": "Oslo", "tags": [], "wind": 3}, "$: unexpected property 'wind'"),
    ({"city": "Oslo", "tags": [], "celsius": True}, "$.celsius: expected number or null"),
    ([1], "$: expected object"),
])
def test_schema_subset(value, found) -> None:
    assert problem(value, SCHEMA) == found


def test_schema_any_of_and_integers() -> None:
    schema = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}
    assert problem(3, schema) is None and problem(2.0, schema) is None and problem("x", schema) is None
    assert problem(-1, schema) == "$: matches none of anyOf" and problem(1.5, schema) is not None


def test_request_text_skips_structure_and_rewrites_only_text() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi user"}, {"type": "image_url", "image_url": {"url": "https://x/user.png"}}]}]}
    assert request_text(body) == "hi user"
    out, changed = rewrite_request(body, lambda s: s.replace("user", "U"))
    assert changed and out["messages"][0]["role"] == "user"
    assert out["messages"][0]["content"][0]["text"] == "hi U"
    assert out["messages"][0]["content"][1]["image_url"]["url"] == "https://x/user.png"
    assert body["messages"][0]["content"][0]["text"] == "hi user"  # a copy: the original is untouched
    assert rewrite_request(body, lambda s: s) == (body, False)


def test_answer_text_and_replacement() -> None:
    data = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "a", "tool_calls": [
        {"function": {"name": "f", "arguments": '{"x": 1}'}}]}}]}
    assert answer_text(data) == 'a\n{"x": 1}'
    assert replace_answer(data, "b")["choices"][0]["message"]["content"] == "b"
    assert answer_text({"choices": [{"text": "legacy"}]}) == "legacy"


def test_held_chunks_carry_the_replacement_once() -> None:
    chunks = [orjson.dumps({"choices": [{"delta": {"content": part}}]}) for part in ("ab", "cd")]
    chunks.append(orjson.dumps({"choices": [], "usage": {"total_tokens": 3}}))
    out = [orjson.loads(c) for c in replace_stream_text(chunks, "new")]
    assert [c["choices"][0]["delta"]["content"] for c in out[:2]] == ["new", ""]
    assert out[2] == {"choices": [], "usage": {"total_tokens": 3}}


def guard(**kw) -> Guardrail:
    return Guardrail(name="g", **{"kind": "deny", **kw})


def test_local_checks_and_actions() -> None:
    deny = guard(patterns=(re.compile(r"ACME-\d+"),), keywords=("Secret",), action="redact")
    found = check_deny(deny, "the SECRET is ACME-12")
    assert found.verdict == "redact" and found.rewrite is not None
    assert found.rewrite("the SECRET is ACME-12") == "the [REDACTED] is [REDACTED]"
    assert check_deny(deny, "nothing here").verdict == "allow"
    assert check_pii(guard(kind="pii", action="flag"), "mail a@b.co", Redactor()).verdict == "flag"
    assert check_pii(guard(kind="pii"), "call me at 5 pm", Redactor()).verdict == "allow"
    size = guard(kind="max_prompt", max_chars=5, max_tokens=10)
    assert check_size(size, "123456", 1).verdict == "block" and check_size(size, "12", 11).verdict == "block"
    assert check_size(size, "12", 3).verdict == "allow"


def test_json_check_needs_a_json_request() -> None:
    json_guard = guard(kind="json_schema")
    assert expected_schema({}) == (False, None)
    assert check_json(json_guard, "not json", {}).verdict == "allow"
    assert check_json(json_guard, "[1]", {"response_format": {"type": "json_object"}}).verdict == "block"
    assert check_json(json_guard, '{"a": 1}', {"response_format": {"type": "json_object"}}).verdict == "allow"


@pytest.mark.parametrize("answer", [{"verdict": "modify"}, {"verdict": "ALLOW"}, [], "allow"])
def test_webhook_answers_outside_the_protocol(answer) -> None:
    with pytest.raises(ValueError):
        verdict_of(answer)
    assert verdict_of({"verdict": "block"}).message is None


def test_windows_hand_out_full_windows_with_the_overlap_and_the_rest_at_the_end():
    windows = Windows(size=10, overlap=4)
    assert windows.feed("abcdef") is None
    assert windows.feed("ghijkl") == "abcdefghijkl"  # 12 >= 10: the first window, no overlap before it
    assert windows.feed("mnopqrstuv") == "ijklmnopqrstuv"  # the last 4 characters read again
    assert windows.feed("wx") is None
    assert windows.take() == "stuvwx" and windows.take() is None and windows.count == 3


def test_a_match_split_across_two_windows_is_found_by_the_overlap():
    deny = Guardrail("d", "deny", patterns=(re.compile("ACME-[0-9]{6}"),))
    windows = Windows(size=8, overlap=6)
    checked = [w for piece in ("hello AC", "ME-123456 bye") if (w := windows.feed(piece)) is not None]
    assert [check_deny(deny, w).verdict for w in checked] == ["allow", "block"]


def test_windows_of_several_guardrails_share_the_smallest_size_and_largest_overlap():
    guards = [Guardrail("a", "pii", window_chars=500, window_overlap_chars=20),
              Guardrail("b", "pii", window_chars=200, window_overlap_chars=50)]
    windows = Windows.for_guards(guards)
    assert (windows.size, windows.overlap) == (200, 50)


def test_anthropic_frames_get_the_new_text_in_their_first_text_delta_and_keep_the_rest():
    def frame(event: str, data: dict) -> bytes:
        return f"event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"

    thinking = frame("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "thinking_delta", "thinking": "hmm"}})
    frames = [frame("message_start", {"type": "message_start", "message": {"id": "m"}}), thinking,
              *(frame("content_block_delta", {"type": "content_block_delta", "index": 1,
                                              "delta": {"type": "text_delta", "text": part}})
                for part in ("mail jane", "@example.com", " now")),
              b"event: ping\ndata: not json\n\n"]
    out = replace_text(frames, "mail [EMAIL] now")
    assert out[:2] == frames[:2] and out[-1] == frames[-1]  # untouched frames stay byte for byte
    texts = [orjson.loads(f.partition(b"data: ")[2])["delta"]["text"] for f in out[2:5]]
    assert texts == ["mail [EMAIL] now", "", ""]
    assert all(f.startswith(b"event: content_block_delta\ndata: ") and f.endswith(b"\n\n") for f in out[2:5])
