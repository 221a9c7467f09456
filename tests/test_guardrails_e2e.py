"""Built-in guardrails end to end: the openai SDK (chat and Responses) and the anthropic SDK through a
real gateway to a scripted OpenAI-compatible upstream on loopback; pre and post, whole and streamed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import anthropic
import openai
import orjson
import pytest

from tests.support.harness import eventually
from tests.support.prom import scrape
from tests.support.scripted_openai import Said

TIMEOUTS = "{connect_s: 1, first_byte_s: 2, total_s: 10}"
EMAIL = "jane.doe@example.com"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
          "required": ["city", "celsius"], "additionalProperties": False}
WEATHER = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}
VERDICTS = "llm_gateway_guardrail_verdicts_total"



@pytest.fixture
def gw(make_gateway, oai, tmp_path: Path):
    return make_gateway(textwrap.dedent(f"""\
        version: 1
        logging: {{access_log: '{tmp_path / 'access.jsonl'}', audit_path: '{tmp_path / 'audit.jsonl'}'}}
        state: {{backend: memory, dlq_path: '{tmp_path / 'dlq.jsonl'}'}}
        providers:
          primary: {{type: openai, base_url: "{oai.url}", api_key: sk-primary, timeouts: {TIMEOUTS}}}
        guardrails:
          no-pii: {{kind: pii, on: [pre], action: block}}
          redact-pii: {{kind: pii, on: [pre, post], action: redact}}
          no-secrets: {{kind: deny, patterns: ["ACME-[0-9]{{6}}"], keywords: [internal only], on: [pre, post]}}
          flag-zeus: {{kind: deny, keywords: [project zeus], action: flag}}
          short: {{kind: max_prompt, max_chars: 300}}
          dark: {{kind: deny, keywords: [forbidden], mode: shadow}}
          held: {{kind: deny, keywords: [internal only], on: [post], stream: hold}}
          held-pii: {{kind: pii, on: [post], action: redact, stream: hold}}
          valid-json: {{kind: json_schema}}
        models:
          gpt:
            context_window: 100000
            deployments: [{{provider: primary, model: gpt-up}}]
            guardrails: [valid-json]
        tenants:
          strict: {{api_keys: [sk-strict], models: '*', guardrails: [no-pii, no-secrets, short, flag-zeus, dark]}}
          redacting: {{api_keys: [sk-redact], models: '*', guardrails: [redact-pii]}}
          holding: {{api_keys: [sk-hold], models: '*', guardrails: [held, held-pii]}}
          audited: {{api_keys: [sk-audit], models: '*', guardrails: [no-secrets], audit: {{bodies: true}}}}
          cached: {{api_keys: [sk-cache], models: '*', guardrails: [redact-pii, no-secrets], cache: {{enabled: true}}}}
        """))


def claude(gw, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=15.0)


def chat(gw, key: str, text: str, **kw):
    return gw.client(key).chat.completions.create(model="gpt", messages=[{"role": "user", "content": text}], **kw)


def access_lines(tmp_path: Path, count: int) -> list[dict]:
    path = tmp_path / "access.jsonl"
    assert eventually(lambda: path.exists() and len(path.read_text().splitlines()) >= count)
    return [orjson.loads(line) for line in path.read_text().splitlines()]


def assert_blocked(err: openai.APIStatusError, name: str, *hidden: str) -> None:
    assert err.status_code == 400
    assert err.body["code"] == "guardrail_blocked" and f"'{name}'" in err.body["message"]
    for text in hidden:
        assert text not in err.body["message"]


# -- pre ---------------------------------------------------------------------------------------------
def test_pii_blocks_the_request_before_anything_costs(gw, oai):
    with pytest.raises(openai.BadRequestError) as info:
        chat(gw, "sk-strict", f"mail me at {EMAIL}")
    assert_blocked(info.value, "no-pii", EMAIL)
    assert oai.calls == 0


def test_deny_blocks_on_the_responses_api_without_naming_the_rule(gw, oai):
    with pytest.raises(openai.BadRequestError) as info:
        gw.client("sk-strict").responses.create(model="gpt", input="ticket ACME-004211 please")
    assert_blocked(info.value, "no-secrets", "ACME", "[0-9]")
    assert oai.calls == 0


def test_deny_keyword_blocks_on_the_messages_api_in_anthropic_shape(gw, oai):
    with pytest.raises(anthropic.BadRequestError) as info:
        claude(gw, "sk-strict").messages.create(model="gpt", max_tokens=50,
                                                messages=[{"role": "user", "content": "This is INTERNAL ONLY."}])
    body = info.value.body
    assert info.value.status_code == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "'no-secrets'" in body["error"]["message"]
    assert "internal only" not in body["error"]["message"].lower()
    assert oai.calls == 0


def test_max_prompt_blocks_a_long_prompt(gw, oai):
    with pytest.raises(openai.BadRequestError) as info:
        chat(gw, "sk-strict", "word " * 100)
    assert_blocked(info.value, "short")
    assert chat(gw, "sk-strict", "short and fine").choices[0].message.content
    assert oai.calls == 1


def test_flag_and_shadow_let_the_request_through_and_are_logged_and_counted(gw, oai, tmp_path):
    oai.say(Said(text="ok"))
    assert chat(gw, "sk-strict", "about project zeus and forbidden things").choices[0].message.content == "ok"
    line = access_lines(tmp_path, 1)[-1]
    verdicts = {(g["guardrail"], g["stage"], g["verdict"]) for g in line["guardrails"]}
    assert {("flag-zeus", "pre", "flag"), ("dark", "pre", "shadow_block"), ("no-pii", "pre", "allow")} <= verdicts
    prom = scrape(gw.url)
    assert prom.value(VERDICTS, guardrail="flag-zeus", stage="pre", verdict="flag") == 1
    assert prom.value(VERDICTS, guardrail="dark", stage="pre", verdict="shadow_block") == 1


def test_block_is_counted_and_in_the_access_log_and_audit(gw, tmp_path):
    with pytest.raises(openai.BadRequestError):
        chat(gw, "sk-audit", "ACME-123456")
    line = access_lines(tmp_path, 1)[-1]
    assert line["guardrails"] == [{"guardrail": "no-secrets", "stage": "pre", "verdict": "block"}]
    assert line["status"] == 400 and line["outcome"] == "guardrail_blocked"
    audit = tmp_path / "audit.jsonl"
    assert eventually(lambda: audit.exists() and audit.read_text().strip() != "")
    record = orjson.loads(audit.read_text().splitlines()[-1])
    assert record["guardrails"] == line["guardrails"]
    assert scrape(gw.url).value(VERDICTS, guardrail="no-secrets", stage="pre", verdict="block") == 1


def test_pii_redact_rewrites_what_the_upstream_sees(gw, oai):
    oai.say(Said(text="noted"))
    chat(gw, "sk-redact", f"I am {EMAIL}")
    sent = oai.requests[-1]["messages"][-1]["content"]
    assert EMAIL not in sent and "[EMAIL]" in sent


def test_pii_redact_on_the_messages_api_rewrites_the_request(gw, oai):
    oai.say(Said(text="noted"))
    claude(gw, "sk-redact").messages.create(model="gpt", max_tokens=50,
                                            messages=[{"role": "user", "content": f"I am {EMAIL}"}])
    assert EMAIL not in orjson.dumps(oai.requests[-1]).decode()


# -- post, whole answers -------------------------------------------------------------------------------
def test_post_redact_rewrites_the_answer_on_every_surface(gw, oai):
    oai.say(Said(text=f"write to {EMAIL}"), Said(text=f"write to {EMAIL}"), Said(text=f"write to {EMAIL}"))
    assert chat(gw, "sk-redact", "who?").choices[0].message.content == "write to [EMAIL]"
    assert gw.client("sk-redact").responses.create(model="gpt", input="who?").output_text == "write to [EMAIL]"
    msg = claude(gw, "sk-redact").messages.create(model="gpt", max_tokens=50,
                                                  messages=[{"role": "user", "content": "who?"}])
    assert msg.content[0].text == "write to [EMAIL]"


def test_post_deny_blocks_the_answer(gw, oai):
    oai.say(Said(text="the code is ACME-765432"), Said(text="the code is ACME-765432"))
    with pytest.raises(openai.BadRequestError) as info:
        chat(gw, "sk-strict", "code?")
    assert_blocked(info.value, "no-secrets", "ACME")
    assert "answer" in info.value.body["message"]
    with pytest.raises(anthropic.BadRequestError) as err:
        claude(gw, "sk-strict").messages.create(model="gpt", max_tokens=50,
                                                messages=[{"role": "user", "content": "code?"}])
    assert "'no-secrets'" in err.value.body["error"]["message"]


def test_json_schema_checks_the_answer_against_the_requests_schema(gw, oai):
    oai.say(Said(text='{"city": "Oslo"}'), Said(text='{"city": "Oslo", "celsius": -3}'), Said(text="not json"))
    with pytest.raises(openai.BadRequestError) as info:
        chat(gw, "sk-redact", "weather?", response_format=WEATHER)
    assert_blocked(info.value, "valid-json")
    ok = chat(gw, "sk-redact", "weather?", response_format=WEATHER)
    assert orjson.loads(ok.choices[0].message.content) == {"city": "Oslo", "celsius": -3}
    fmt = {"type": "json_schema", "name": "weather", "schema": SCHEMA, "strict": True}
    with pytest.raises(openai.BadRequestError) as info:
        gw.client("sk-redact").responses.create(model="gpt", input="weather?", text={"format": fmt})
    assert_blocked(info.value, "valid-json")


def test_json_schema_ignores_requests_without_a_schema(gw, oai):
    oai.say(Said(text="plain words"))
    assert chat(gw, "sk-redact", "hi").choices[0].message.content == "plain words"


# -- post, streams ----------------------------------------------------------------------------------
def test_stream_end_releases_text_then_ends_with_the_error_event(gw, oai):
    oai.say(Said(text="here it is: ACME-765432 done", chunk_chars=4))
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in chat(gw, "sk-strict", "code?", stream=True):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(got).startswith("here it is")
    assert "guardrail 'no-secrets'" in str(info.value.message)


def test_stream_end_on_the_messages_api_raises_in_the_sdk(gw, oai):
    oai.say(Said(text="internal only secrets", chunk_chars=4))
    stream = claude(gw, "sk-strict").messages.stream(model="gpt", max_tokens=50,
                                                     messages=[{"role": "user", "content": "tell"}])
    with pytest.raises(anthropic.APIError) as info, stream as events:
        for _ in events.text_stream:
            pass
    assert "no-secrets" in str(info.value)


def test_stream_hold_releases_nothing_of_a_blocked_answer(gw, oai):
    oai.say(Said(text="this is internal only stuff", chunk_chars=3))
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in chat(gw, "sk-hold", "tell", stream=True):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert got == [] and "guardrail 'held'" in str(info.value.message)


def test_stream_hold_releases_a_clean_answer_whole(gw, oai):
    oai.say(Said(text="all public information", chunk_chars=3))
    text = "".join(c.delta.content or "" for chunk in chat(gw, "sk-hold", "tell", stream=True)
                   for c in chunk.choices)
    assert text == "all public information"


def test_a_redaction_holds_the_stream_by_default(gw, oai):
    oai.say(Said(text=f"mail {EMAIL} now", chunk_chars=3))
    text = "".join(c.delta.content or "" for chunk in chat(gw, "sk-redact", "tell", stream=True)
                   for c in chunk.choices)
    assert text == "mail [EMAIL] now"  # redact-pii names no stream: a redaction holds (end is refused at load)


def test_stream_hold_redacts_the_held_text(gw, oai, tmp_path):
    oai.say(Said(text=f"mail {EMAIL} now", chunk_chars=3))
    text = "".join(c.delta.content or "" for chunk in chat(gw, "sk-hold", "tell", stream=True)
                   for c in chunk.choices)
    assert text == "mail [EMAIL] now"
    line = access_lines(tmp_path, 1)[-1]
    assert {"guardrail": "held-pii", "stage": "post", "verdict": "redact"} in line["guardrails"]


def test_stream_hold_on_the_messages_and_responses_apis(gw, oai):
    oai.say(Said(text=f"mail {EMAIL} now", chunk_chars=3), Said(text="internal only", chunk_chars=3),
            Said(text=f"mail {EMAIL} now", chunk_chars=3))
    with claude(gw, "sk-hold").messages.stream(model="gpt", max_tokens=50,
                                               messages=[{"role": "user", "content": "tell"}]) as stream:
        assert "".join(stream.text_stream) == "mail [EMAIL] now"
    got: list[str] = []
    blocked = claude(gw, "sk-hold").messages.stream(model="gpt", max_tokens=50,
                                                    messages=[{"role": "user", "content": "tell"}])
    with pytest.raises(anthropic.APIError) as info, blocked as events:
        got.extend(events.text_stream)
    assert got == [] and "'held'" in str(info.value)
    events = gw.client("sk-hold").responses.create(model="gpt", input="tell", stream=True)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "mail [EMAIL] now"


# -- with the cache --------------------------------------------------------------------------------
def test_a_pre_redaction_is_what_the_cache_key_sees(gw, oai):
    oai.say(Said(text="hello [EMAIL]"))
    first = chat(gw, "sk-cache", "I am jane@example.com", temperature=0)
    second = chat(gw, "sk-cache", "I am john@example.org", temperature=0)
    assert first.choices[0].message.content == second.choices[0].message.content == "hello [EMAIL]"
    assert oai.calls == 1


def test_a_blocked_answer_is_never_cached(gw, oai):
    oai.say(Said(text="ACME-123456"), Said(text="clean"))
    with pytest.raises(openai.BadRequestError):
        chat(gw, "sk-cache", "code?", temperature=0)
    assert chat(gw, "sk-cache", "code?", temperature=0).choices[0].message.content == "clean"
    assert oai.calls == 2


# -- every built-in kind on every surface, whole and streamed ---------------------------------------------
def run(gw, surface: str, key: str, text: str, stream: bool, json: bool = False) -> tuple[str, str | None]:
    """(the text received, the error's message or None) through the surface's own SDK call."""
    got: list[str] = []
    try:
        if surface == "chat":
            kw = {"response_format": WEATHER} if json else {}
            if not stream:
                return chat(gw, key, text, **kw).choices[0].message.content or "", None
            for chunk in chat(gw, key, text, stream=True, **kw):
                got.extend(c.delta.content or "" for c in chunk.choices)
        elif surface == "responses":
            fmt = {"format": {"type": "json_schema", "name": "weather", "schema": SCHEMA}} if json else {}
            call = gw.client(key).responses.create
            if not stream:
                return call(model="gpt", input=text, text=fmt or openai.NOT_GIVEN).output_text, None
            for event in call(model="gpt", input=text, text=fmt or openai.NOT_GIVEN, stream=True):
                if event.type == "response.output_text.delta":
                    got.append(event.delta)
                elif event.type == "response.failed":
                    return "".join(got), event.response.error.message
        else:
            messages = [{"role": "user", "content": text}]
            if not stream:
                return claude(gw, key).messages.create(model="gpt", max_tokens=50, messages=messages).content[0].text, None
            with claude(gw, key).messages.stream(model="gpt", max_tokens=50, messages=messages) as events:
                got.extend(events.text_stream)
    except (openai.APIError, anthropic.APIError) as exc:
        return "".join(got), str(exc)
    return "".join(got), None


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("surface", ["chat", "messages", "responses"])
def test_every_builtin_kind_on_every_surface(gw, oai, surface, stream):
    for text, name in ((f"mail me at {EMAIL}", "no-pii"), ("ticket ACME-004211", "no-secrets"),
                       ("word " * 100, "short")):
        got, error = run(gw, surface, "sk-strict", text, stream)
        assert got == "" and f"'{name}'" in (error or "")
    assert oai.calls == 0  # pre blocks cost nothing
    oai.say(Said(text="the code is ACME-765432", chunk_chars=4), Said(text=f"write to {EMAIL}", chunk_chars=4))
    got, error = run(gw, surface, "sk-strict", "code?", stream)
    assert "'no-secrets'" in (error or "") and "765432" not in (error or "")
    assert got == ("the code is ACME-765432" if stream else "")  # stream: end: the text went, then the error
    assert run(gw, surface, "sk-redact", "who?", stream) == ("write to [EMAIL]", None)  # a redaction holds
    if surface != "messages":  # the Messages API has no JSON-schema output option
        oai.say(Said(text='{"city": "Oslo"}', chunk_chars=4))
        assert "'valid-json'" in (run(gw, surface, "sk-redact", "weather?", stream, json=True)[1] or "")
