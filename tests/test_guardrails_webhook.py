"""The webhook guardrail end to end: a loopback hook (allow, block, modify, slow, broken) in both
failure modes, through the openai SDK (chat, Responses) and the anthropic SDK, whole and streamed."""

from __future__ import annotations

import textwrap
import time

import anthropic
import openai
import pytest

from tests.support.policy_hook import Slow, Status
from tests.support.prom import scrape
from tests.support.scripted_openai import Said

TIMEOUTS = "{connect_s: 1, first_byte_s: 2, total_s: 10}"
VERDICTS = "llm_gateway_guardrail_verdicts_total"
HELLO = [{"role": "user", "content": "hello"}]



@pytest.fixture
def gw(make_gateway, oai, hook, tmp_path):
    return make_gateway(textwrap.dedent(f"""\
        version: 1
        logging: {{access_log: 'off'}}
        state: {{backend: memory, dlq_path: '{tmp_path / 'dlq.jsonl'}'}}
        providers:
          primary: {{type: openai, base_url: "{oai.url}", api_key: sk-primary, timeouts: {TIMEOUTS}}}
        guardrails:
          open-hook: {{kind: webhook, url: "{hook.url}", timeout_ms: 300, on_error: allow, on: [pre, post]}}
          closed-hook: {{kind: webhook, url: "{hook.url}", timeout_ms: 300, on_error: block, on: [pre]}}
          held-hook: {{kind: webhook, url: "{hook.url}", timeout_ms: 1000, on: [post], stream: hold}}
          redacted-hook: {{kind: webhook, url: "{hook.url}", redact: true, on: [pre]}}
          both-hook: {{kind: webhook, url: "{hook.url}", timeout_ms: 1000, on: [pre, post], stream: hold}}
        models:
          gpt:
            deployments: [{{provider: primary, model: gpt-up}}]
        tenants:
          open: {{api_keys: [sk-open], models: '*', guardrails: [open-hook]}}
          closed: {{api_keys: [sk-closed], models: '*', guardrails: [closed-hook]}}
          held: {{api_keys: [sk-held], models: '*', guardrails: [held-hook]}}
          private: {{api_keys: [sk-private], models: '*', guardrails: [redacted-hook]}}
          both: {{api_keys: [sk-both], models: '*', guardrails: [both-hook]}}
        """))


def chat(gw, key: str, text: str = "hello", **kw):
    return gw.client(key).chat.completions.create(model="gpt", messages=[{"role": "user", "content": text}], **kw)


def claude(gw, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=15.0)


def test_allow_sends_the_protocol_payload_pre_and_post(gw, oai, hook):
    oai.say(Said(text="hi there"))
    assert chat(gw, "sk-open").choices[0].message.content == "hi there"
    pre, post = hook.received
    assert pre["stage"] == "pre" and pre["tenant"] == "open" and pre["model"] == "gpt"
    assert pre["surface"] == "chat" and pre["request"]["messages"] == [{"role": "user", "content": "hello"}]
    assert "response" not in pre
    assert post["stage"] == "post" and post["response"]["choices"][0]["message"]["content"] == "hi there"
    prom = scrape(gw.url)
    assert prom.value(VERDICTS, guardrail="open-hook", stage="pre", verdict="allow") == 1
    assert prom.value(VERDICTS, guardrail="open-hook", stage="post", verdict="allow") == 1


def test_block_answers_400_with_the_hooks_message(gw, oai, hook):
    hook.answer({"verdict": "block", "message": "off-topic request"})
    with pytest.raises(openai.BadRequestError) as info:
        chat(gw, "sk-open")
    body = info.value.body
    assert body["code"] == "guardrail_blocked"
    assert "'open-hook'" in body["message"] and "off-topic request" in body["message"]
    assert oai.calls == 0


def test_pre_modify_replaces_the_request_but_not_its_model(gw, oai, hook):
    hook.answer({"verdict": "modify", "body": {"model": "other", "messages": [{"role": "user", "content": "safe"}]}})
    oai.say(Said(text="ok"))
    chat(gw, "sk-open", "unsafe")
    sent = oai.requests[-1]
    assert sent["messages"] == [{"role": "user", "content": "safe"}] and sent["model"] == "gpt-up"


def test_post_modify_replaces_the_answer(gw, oai, hook):
    replacement = {"object": "chat.completion", "model": "gpt", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "[answer withheld]"}, "finish_reason": "stop"}]}
    hook.answer({"verdict": "allow"}, {"verdict": "modify", "body": replacement})
    oai.say(Said(text="something"))
    assert chat(gw, "sk-open").choices[0].message.content == "[answer withheld]"


def test_slow_hook_fails_open(gw, oai, hook):
    hook.answer(Slow(1.5))
    oai.say(Said(text="served"))
    started = time.monotonic()
    assert chat(gw, "sk-open").choices[0].message.content == "served"
    assert time.monotonic() - started < 1.4
    assert scrape(gw.url).value(VERDICTS, guardrail="open-hook", stage="pre", verdict="error_allow") == 1


def test_slow_hook_fails_closed(gw, oai, hook):
    hook.answer(Slow(1.5))
    with pytest.raises(openai.BadRequestError) as info:
        chat(gw, "sk-closed")
    assert info.value.body["code"] == "guardrail_blocked" and "'closed-hook'" in info.value.body["message"]
    assert oai.calls == 0
    assert scrape(gw.url).value(VERDICTS, guardrail="closed-hook", stage="pre", verdict="error_block") == 1


@pytest.mark.parametrize("broken", [Status(500), {"verdict": "maybe"}])
def test_broken_hook_answers_are_errors(gw, oai, hook, broken):
    hook.answer(broken, broken)
    with pytest.raises(openai.BadRequestError):
        chat(gw, "sk-closed")
    oai.say(Said(text="served"))
    assert chat(gw, "sk-open").choices[0].message.content == "served"


def test_messages_api_sends_the_native_body_and_gets_anthropic_errors(gw, oai, hook):
    hook.answer({"verdict": "allow"}, {"verdict": "block", "message": "nope"})
    oai.say(Said(text="fine"))
    msg = claude(gw, "sk-closed").messages.create(model="gpt", max_tokens=50, messages=HELLO)
    assert msg.content[0].text == "fine"
    assert hook.received[0]["surface"] == "messages" and hook.received[0]["request"]["max_tokens"] == 50
    with pytest.raises(anthropic.BadRequestError) as info:
        claude(gw, "sk-closed").messages.create(model="gpt", max_tokens=50, messages=HELLO)
    assert info.value.body["type"] == "error" and "nope" in info.value.body["error"]["message"]


def test_messages_api_pre_modify_in_the_native_form(gw, oai, hook):
    hook.answer({"verdict": "modify", "body": {"max_tokens": 50, "messages": [{"role": "user", "content": "safe"}]}})
    oai.say(Said(text="ok"))
    claude(gw, "sk-closed").messages.create(model="gpt", max_tokens=50, messages=HELLO)
    assert oai.requests[-1]["messages"][-1]["content"] in ("safe", [{"type": "text", "text": "safe"}])


def test_responses_api_block_and_surface(gw, oai, hook):
    hook.answer({"verdict": "block"})
    with pytest.raises(openai.BadRequestError) as info:
        gw.client("sk-closed").responses.create(model="gpt", input="hello")
    assert hook.received[0]["surface"] == "responses" and hook.received[0]["request"]["input"] == "hello"
    assert info.value.body["code"] == "guardrail_blocked"


def test_held_stream_is_checked_whole_by_the_hook(gw, oai, hook):
    oai.say(Said(text="streamed answer", chunk_chars=4), Said(text="bad answer", chunk_chars=4))
    replacement = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "replaced"}}]}
    hook.answer({"verdict": "modify", "body": replacement}, {"verdict": "block"})
    text = "".join(c.delta.content or "" for chunk in chat(gw, "sk-held", stream=True) for c in chunk.choices)
    assert text == "replaced"
    assert hook.received[0]["response"]["choices"][0]["message"]["content"] == "streamed answer"
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in chat(gw, "sk-held", stream=True):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert got == [] and "'held-hook'" in str(info.value.message)


def test_redact_sends_the_hook_redacted_bodies(gw, oai, hook):
    oai.say(Said(text="ok"))
    chat(gw, "sk-private", "I am jane.doe@example.com")
    assert "jane.doe" not in str(hook.received[0]) and "[EMAIL]" in str(hook.received[0])
    assert "jane.doe@example.com" in oai.requests[-1]["messages"][-1]["content"]


def ask(gw, surface: str, key: str, stream: bool) -> str:
    """The answer's text through the surface's own SDK call, whole or streamed."""
    if surface == "chat":
        if not stream:
            return chat(gw, key).choices[0].message.content or ""
        return "".join(c.delta.content or "" for chunk in chat(gw, key, stream=True) for c in chunk.choices)
    if surface == "responses":
        if not stream:
            return gw.client(key).responses.create(model="gpt", input="hello").output_text
        events = gw.client(key).responses.create(model="gpt", input="hello", stream=True)
        return "".join(e.delta for e in events if e.type == "response.output_text.delta")
    if not stream:
        return claude(gw, key).messages.create(model="gpt", max_tokens=50, messages=HELLO).content[0].text
    with claude(gw, key).messages.stream(model="gpt", max_tokens=50, messages=HELLO) as events:
        return "".join(events.text_stream)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("surface", ["chat", "messages", "responses"])
def test_every_verdict_on_every_surface(gw, oai, hook, surface, stream):
    """allow, block, modify (post), slow past the timeout open and closed; errors in the surface's shape."""
    replaced = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "replaced"}}]}
    hook.answer({"verdict": "allow"}, {"verdict": "allow"}, {"verdict": "block", "message": "not here"},
                {"verdict": "allow"}, {"verdict": "modify", "body": replaced}, Slow(1.5), {"verdict": "allow"},
                Slow(0.6))  # past both-hook's 1 s and closed-hook's 300 ms timeouts
    oai.say(*(Said(text="upstream words", chunk_chars=4) for _ in range(3)))
    assert ask(gw, surface, "sk-both", stream) == "upstream words"
    error = anthropic.BadRequestError if surface == "messages" else openai.BadRequestError
    with pytest.raises(error) as info:
        ask(gw, surface, "sk-both", stream)
    body = info.value.body
    message = body["error"]["message"] if surface == "messages" else body["message"]
    assert "'both-hook'" in message and "not here" in message
    assert surface != "messages" or body["type"] == "error"
    assert surface == "messages" or body["code"] == "guardrail_blocked"
    assert ask(gw, surface, "sk-both", stream) == "replaced"
    assert ask(gw, surface, "sk-both", stream) == "upstream words"  # slow: fails open (on_error: allow)
    with pytest.raises(error):
        ask(gw, surface, "sk-closed", stream)  # slow: fails closed
    assert oai.calls == 3 and {r["surface"] for r in hook.received} == {"chat" if surface == "chat" else surface}
    prom = scrape(gw.url)
    assert prom.value(VERDICTS, guardrail="both-hook", stage="pre", verdict="error_allow") == 1
    assert prom.value(VERDICTS, guardrail="both-hook", stage="post", verdict="modify") == 1
    assert prom.value(VERDICTS, guardrail="closed-hook", stage="pre", verdict="error_block") == 1
