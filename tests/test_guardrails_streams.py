"""Post guardrails on streams, end to end with the SDKs: ``stream: window`` on the three surfaces (the
text flows a window at a time and a match ends the stream with the surface's own error event), a
webhook's late replacement on ``stream: end`` (recorded as ``modify_unapplied``), and a held
redaction on the lossless Messages and Responses paths (the deployment's own frames, rewritten, not
a block)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import anthropic
import openai
import orjson
import pytest

from tests.support.harness import eventually
from tests.support.mock_anthropic import Reply
from tests.support.mock_responses import Fault
from tests.support.prom import scrape
from tests.support.scripted_openai import Said

TIMEOUTS = "{connect_s: 1, first_byte_s: 2, total_s: 10}"
VERDICTS = "llm_gateway_guardrail_verdicts_total"
EMAIL = "jane.doe@example.com"
SECRET = "ACME-123456"
# windows of 24 characters: the secret starts 4 characters before the second window ends, so only the
# overlap (16) of the next window sees it whole; the first window is clean and flows to the client
CLEAN = "The weather is sunny an"  # 23 characters
TEXT = CLEAN + "d warm all day long. " + SECRET + " is the code; the rest must never reach the client."
assert TEXT.index(SECRET) == 48 - 4
HELLO = [{"role": "user", "content": "tell"}]


@pytest.fixture
def gw(make_gateway, oai, claude, native, hook, tmp_path: Path):
    return make_gateway(textwrap.dedent(f"""\
        version: 1
        logging: {{access_log: '{tmp_path / 'access.jsonl'}', audit_path: '{tmp_path / 'audit.jsonl'}'}}
        state: {{backend: memory, dlq_path: '{tmp_path / 'dlq.jsonl'}'}}
        providers:
          primary: {{type: openai, base_url: "{oai.url}", api_key: sk-primary, timeouts: {TIMEOUTS}}}
          claude: {{type: anthropic, base_url: "{claude.url}", api_key: {claude.api_key}}}
          hosted: {{type: openai, base_url: "{native.url}", api_key: sk-up, responses: true}}
        guardrails:
          win: {{kind: deny, patterns: ["ACME-[0-9]{{6}}"], on: [post], stream: window, window_chars: 24,
                 window_overlap_chars: 16}}
          late-hook: {{kind: webhook, url: "{hook.url}", on: [post], stream: end}}
          no-pii: {{kind: pii, on: [post], action: redact}}
          held: {{kind: deny, keywords: [internal only], on: [post], stream: hold}}
        models:
          gpt: {{deployments: [{{provider: primary, model: gpt-up}}]}}
          sonnet: {{deployments: [{{provider: claude, model: claude-sonnet-4-5}}]}}
          hosted: {{deployments: [{{provider: hosted, model: gpt-real}}]}}
        tenants:
          windowed: {{api_keys: [sk-win], models: '*', guardrails: [win], audit: {{bodies: true}}}}
          hooked: {{api_keys: [sk-hook], models: '*', guardrails: [late-hook]}}
          native: {{api_keys: [sk-native], models: '*', guardrails: [no-pii, held]}}
        """))


def claude_client(gw, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=15.0)


def records(path: Path, count: int) -> list[dict]:
    assert eventually(lambda: path.exists() and len(path.read_text().splitlines()) >= count)
    return [orjson.loads(line) for line in path.read_text().splitlines()]


# -- stream: window ------------------------------------------------------------------------------------
def test_window_on_chat_releases_clean_windows_then_ends_with_the_error(gw, oai, tmp_path):
    oai.say(Said(text=TEXT, chunk_chars=4))
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in gw.client("sk-win").chat.completions.create(model="gpt", messages=HELLO, stream=True):
            got.extend(c.delta.content or "" for c in chunk.choices)
    text = "".join(got)
    assert text.startswith(CLEAN) and SECRET not in text and "never" not in text
    assert "guardrail 'win'" in str(info.value.message) and "ACME" not in str(info.value.message)
    block = {"guardrail": "win", "stage": "post", "verdict": "block"}
    assert block in records(tmp_path / "access.jsonl", 1)[-1]["guardrails"]
    assert block in records(tmp_path / "audit.jsonl", 1)[-1]["guardrails"]
    assert scrape(gw.url).value(VERDICTS, guardrail="win", stage="post", verdict="block") == 1


def test_window_on_messages_ends_with_anthropics_error_event(gw, oai):
    oai.say(Said(text=TEXT, chunk_chars=4))
    got: list[str] = []
    stream = claude_client(gw, "sk-win").messages.stream(model="gpt", max_tokens=100, messages=HELLO)
    with pytest.raises(anthropic.APIError) as info, stream as events:
        got.extend(events.text_stream)
    text = "".join(got)
    assert text.startswith(CLEAN) and SECRET not in text
    assert "'win'" in str(info.value)


def test_window_on_the_lossless_messages_path_sends_only_checked_frames(gw, claude):
    claude.push(Reply(text=TEXT, chunk_chars=4))
    got: list[str] = []
    stream = claude_client(gw, "sk-win").messages.stream(model="sonnet", max_tokens=100, messages=HELLO)
    with pytest.raises(anthropic.APIError) as info, stream as events:
        got.extend(events.text_stream)
    text = "".join(got)
    assert text.startswith(CLEAN) and SECRET not in text
    assert "'win'" in str(info.value) and claude.calls == 1


def test_window_on_responses_ends_with_response_failed(gw, oai):
    oai.say(Said(text=TEXT, chunk_chars=4))
    events = list(gw.client("sk-win").responses.create(model="gpt", input="tell", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.startswith(CLEAN) and SECRET not in text
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.error.code == "guardrail_blocked"
    assert "'win'" in failed.response.error.message


def test_window_lets_a_clean_answer_through_whole_and_counts_one_verdict(gw, oai):
    clean = "nothing secret here, only a long and harmless answer about the weather in Oslo today"
    oai.say(Said(text=clean, chunk_chars=5))
    chunks = gw.client("sk-win").chat.completions.create(model="gpt", messages=HELLO, stream=True)
    assert "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices) == clean
    assert scrape(gw.url).value(VERDICTS, guardrail="win", stage="post", verdict="allow") == 1


# -- stream: end ----------------------------------------------------------------------------------------
def test_a_webhook_replacement_on_an_ended_stream_is_recorded_as_unapplied(gw, oai, hook):
    oai.say(Said(text="original words", chunk_chars=3))
    hook.answer({"verdict": "modify", "body": {"choices": [{"message": {"content": "replaced"}}]}})
    chunks = gw.client("sk-hook").chat.completions.create(model="gpt", messages=HELLO, stream=True)
    assert "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices) == "original words"
    assert hook.received[-1]["response"]["choices"][0]["message"]["content"] == "original words"
    assert scrape(gw.url).value(VERDICTS, guardrail="late-hook", stage="post", verdict="modify_unapplied") == 1


# -- stream: hold on the lossless Messages path -----------------------------------------------------------
def test_a_held_redaction_rewrites_the_deployments_own_stream(gw, claude):
    claude.push(Reply(thinking="let me think", text=f"write to {EMAIL} today", chunk_chars=4))
    with claude_client(gw, "sk-native").messages.stream(
            model="sonnet", max_tokens=2048, messages=HELLO,
            thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "write to [EMAIL] today"
    assert [b.type for b in final.content] == ["thinking", "text"]  # the deployment's own blocks, kept
    assert final.content[0].signature == "c2lnbmF0dXJl" and final.content[1].text == text
    prom = scrape(gw.url)
    assert prom.value(VERDICTS, guardrail="no-pii", stage="post", verdict="redact") == 1


def test_a_held_block_on_the_lossless_path_releases_nothing(gw, claude):
    claude.push(Reply(text="this is internal only material", chunk_chars=4))
    got: list[str] = []
    stream = claude_client(gw, "sk-native").messages.stream(model="sonnet", max_tokens=100, messages=HELLO)
    with pytest.raises(anthropic.APIError) as info, stream as events:
        got.extend(events.text_stream)
    assert got == [] and "'held'" in str(info.value)


def test_a_held_redaction_rewrites_a_native_responses_stream_and_what_is_stored(gw, native):
    native.push(Fault(text=f"write to {EMAIL} today", chunk_chars=4))
    client = gw.client("sk-native")
    with client.responses.stream(model="hosted", input="tell") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "write to [EMAIL] today"
    assert final.id.startswith("resp_mock_")  # the deployment's own Response, not a translation
    assert client.responses.retrieve(final.id).output_text == "write to [EMAIL] today"
