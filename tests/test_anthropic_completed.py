"""Anthropic from OpenAI chat: JSON mode, PDF documents, cache_control on parts, 529 failing over."""

from __future__ import annotations

import base64
import json
import textwrap

import pytest

from gateway.policy.model import RetryPolicy
from gateway.providers.anthropic_translate import JSON_MODE_INSTRUCTION, to_anthropic
from tests.support.mock_anthropic import ErrorReply, Reply

PDF = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 tiny").decode()
CACHED = {"type": "ephemeral"}


def req(**body):
    return {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}], **body}


def test_json_object_is_a_system_instruction_added_after_the_callers_own():
    out = to_anthropic(req(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                           response_format={"type": "json_object"}))
    assert out["system"] == "be brief\n\n" + JSON_MODE_INSTRUCTION and "output_config" not in out
    assert to_anthropic(req(response_format={"type": "json_object"}))["system"] == JSON_MODE_INSTRUCTION


def test_pdf_file_part_is_a_document_block():
    content = [{"type": "text", "text": "summarise"},
               {"type": "file", "file": {"file_data": PDF, "filename": "report.pdf"}}]
    block = to_anthropic(req(messages=[{"role": "user", "content": content}]))["messages"][0]["content"][1]
    assert block == {"type": "document", "title": "report.pdf", "source": {
        "type": "base64", "media_type": "application/pdf", "data": PDF.split(",", 1)[1]}}


@pytest.mark.parametrize("file", [{"file_id": "file-abc"}, {"file_data": "data:text/csv;base64,YQ=="}],
                         ids=["file-id", "not-pdf"])
def test_other_files_are_a_400_naming_the_part(file):
    from gateway.errors import GatewayError

    with pytest.raises(GatewayError) as info:
        to_anthropic(req(messages=[{"role": "user", "content": [{"type": "file", "file": file}]}]))
    assert info.value.status == 400 and "messages[0].content[0].file" in str(info.value.body())


def test_cache_control_on_parts_is_kept():
    system = [{"type": "text", "text": "long rules", "cache_control": CACHED}, {"type": "text", "text": "more"}]
    user = [{"type": "text", "text": "big context", "cache_control": CACHED},
            {"type": "file", "file": {"file_data": PDF}, "cache_control": CACHED}, {"type": "text", "text": "q"}]
    out = to_anthropic(req(messages=[{"role": "system", "content": system}, {"role": "user", "content": user}]))
    assert out["system"] == [{"type": "text", "text": "long rules", "cache_control": CACHED},
                             {"type": "text", "text": "more"}]
    blocks = out["messages"][0]["content"]
    assert [b.get("cache_control") for b in blocks] == [CACHED, CACHED, None]
    plain = to_anthropic(req(messages=[{"role": "system", "content": [{"type": "text", "text": "a"}]},
                                       {"role": "user", "content": "hi"}]))
    assert plain["system"] == "a"  # no cache_control anywhere: the system prompt stays a string


def test_529_is_retryable_by_default():
    assert 529 in RetryPolicy().on_status



def test_overloaded_fails_over_and_json_mode_reaches_claude(make_gateway, claude, backup):
    gw = make_gateway(textwrap.dedent(f"""\
        version: 1
        providers:
          claude: {{type: anthropic, base_url: "{claude.url}", api_key: {claude.api_key}}}
          backup: {{type: openai, base_url: "{backup.url}", api_key: sk-b}}
        models:
          sonnet:
            deployments: [{{provider: claude, model: claude-sonnet-4-5}}, {{provider: backup, model: b}}]
        retry: {{attempts: 1, backoff_ms: 0}}
        tenants:
          acme: {{api_keys: [sk-acme], models: [sonnet]}}
        """))
    client = gw.client("sk-acme")
    claude.push(ErrorReply.overloaded())
    raw = client.chat.completions.with_raw_response.create(model="sonnet", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-gateway-provider"] == "backup" and backup.calls == 1 and claude.calls == 1

    claude.push(Reply(text='{"answer": 42}'))
    out = client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "json please"}],
                                         response_format={"type": "json_object"})
    assert json.loads(out.choices[0].message.content) == {"answer": 42}
    assert claude.requests[-1]["system"] == JSON_MODE_INSTRUCTION

    content = [{"type": "file", "file": {"file_data": PDF, "filename": "r.pdf"}, "cache_control": CACHED},
               {"type": "text", "text": "summarise"}]
    client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": content}])
    sent = claude.requests[-1]["messages"][0]["content"][0]
    assert sent["type"] == "document" and sent["cache_control"] == CACHED
