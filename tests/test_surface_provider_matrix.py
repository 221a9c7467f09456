"""One scenario for every pair of inbound surface and provider family, through a real gateway.

Surfaces: OpenAI chat (openai SDK), Anthropic Messages (anthropic SDK), OpenAI Responses (openai SDK).
Families: openai, anthropic, gemini, bedrock (SigV4 against a verifying mock; skipped without
botocore) and the built-in mock. Each pair runs: a plain answer, a stream, a tool round trip, usage
and cost charged exactly once, a 5xx before the first byte failing over to a backup deployment, and a
stream cut after its first bytes ending with the surface's error. One gateway per family.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.support.budget import ADMIN_KEY, spend
from tests.support.harness import Gateway, ServerThread
from tests.support.mock_anthropic import ErrorReply as AntError
from tests.support.mock_anthropic import MockAnthropic
from tests.support.mock_anthropic import Reply as AntReply
from tests.support.mock_gemini import ErrorReply as GemError
from tests.support.mock_gemini import MockGemini
from tests.support.mock_gemini import Reply as GemReply
from tests.support.mock_openai import Fault, MockOpenAI
from tests.support.scripted_openai import Said, ScriptedOpenAI

SURFACES = ("chat", "messages", "responses")
FAMILIES = ("openai", "anthropic", "gemini", "bedrock", "mock")
PRICE = (2.0, 8.0)  # USD per 1M input / output tokens
ASK = "hello there"
CALL = ("get_weather", {"city": "Paris"})
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TIMEOUTS = "{connect_s: 1, first_byte_s: 3, total_s: 10}"


@dataclass
class Family:
    """A provider family's mock upstream and how to script it."""

    name: str
    provider: str  # the policy's provider entry (YAML flow mapping)
    tool_call: Callable[[], None]  # the next answer calls CALL
    fail: Callable[[], None]  # the next call gets a 5xx before any byte
    cut: Callable[[], None]  # the next stream breaks after a few events
    server: Any = None


def _openai(thread: ServerThread) -> Family:
    server = thread.call(ScriptedOpenAI("primary").start())
    return Family("openai", f'{{type: openai, base_url: "{server.url}", api_key: sk-up, timeouts: {TIMEOUTS}}}',
                  lambda: server.say(Said(calls=[CALL])), lambda: server.push(Fault(status=500)),
                  lambda: server.push(Fault(cut_after=2)), server)


def _anthropic(thread: ServerThread) -> Family:
    server = thread.call(MockAnthropic().start())
    return Family("anthropic", f'{{type: anthropic, base_url: "{server.url}", api_key: {server.api_key}, '
                               f'timeouts: {TIMEOUTS}}}',
                  lambda: server.push(AntReply(tool_calls=[CALL])),
                  lambda: server.push(AntError(500, "api_error", "Internal server error")),
                  lambda: server.push(AntReply(cut_after=5)), server)


def _gemini(thread: ServerThread) -> Family:
    server = thread.call(MockGemini().start())
    return Family("gemini", f'{{type: gemini, base_url: "{server.url}", api_key: {server.api_key}, '
                            f'timeouts: {TIMEOUTS}}}',
                  lambda: server.push(GemReply(calls=[CALL])), lambda: server.push(GemError.internal()),
                  lambda: server.push(GemReply(cut_after=1, chunk_chars=2)), server)


def _bedrock(thread: ServerThread) -> Family:
    from tests.support.mock_bedrock import ErrorReply, MockBedrock, Reply

    server = thread.call(MockBedrock().start())
    return Family("bedrock", f'{{type: bedrock, region: us-east-1, base_url: "{server.url}", timeouts: {TIMEOUTS}}}',
                  lambda: server.push(Reply(tool_calls=[CALL])), lambda: server.push(ErrorReply.internal()),
                  lambda: server.push(Reply(cut_after=4)), server)


class _Mock:
    """The built-in mock: tools are answered from the request; 5xx comes from a ``failure_rate: 1`` twin."""

    def __init__(self) -> None:
        self.failing = False

    def family(self, _thread: ServerThread) -> Family:
        return Family("mock", "{type: mock}", lambda: None, self._fail, lambda: pytest.skip("the mock never cuts"))

    def _fail(self) -> None:
        self.failing = True


STARTERS: dict[str, Callable[[ServerThread], Family]] = {
    "openai": _openai, "anthropic": _anthropic, "gemini": _gemini, "bedrock": _bedrock,
}


@pytest.fixture(scope="module", params=FAMILIES)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A gateway whose model ``m`` is the family's provider then a backup; ``m-fail`` always fails over."""
    name = request.param
    saved = dict(os.environ)
    if name == "bedrock":
        pytest.importorskip("botocore")
        from tests.support.aws_wire import TEST_ACCESS_KEY, TEST_SECRET_KEY

        os.environ.update(AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=TEST_SECRET_KEY,
                          AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent",
                          AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
        for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN",
                    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
            os.environ.pop(var, None)
    thread = ServerThread()
    backup: MockOpenAI = thread.mock("backup")
    fam = _Mock().family(thread) if name == "mock" else STARTERS[name](thread)
    failing = "{type: mock, failure_rate: 1}" if name == "mock" else fam.provider
    path = Path(tmp_path_factory.mktemp(f"matrix-{name}")) / "policy.yaml"
    path.write_text(f"""
version: 1
admin: {{api_keys: [{ADMIN_KEY}]}}
providers:
  primary: {fam.provider}
  failing: {failing}
  backup: {{type: openai, base_url: "{backup.url}", api_key: sk-backup, timeouts: {TIMEOUTS}}}
models:
  m:
    price: {{input: {PRICE[0]}, output: {PRICE[1]}}}
    deployments: [{{provider: primary, model: up-model}}, {{provider: backup, model: backup-model}}]
  m-fail:
    price: {{input: {PRICE[0]}, output: {PRICE[1]}}}
    deployments: [{{provider: failing, model: up-model}}, {{provider: backup, model: backup-model}}]
retry: {{attempts: 1, backoff_ms: 0}}
circuit_breaker: {{failures: 1000}}  # the failover scenarios must not open it for the next ones
cache: {{enabled: false}}
tenants:
  acme: {{api_keys: [sk-acme], models: "*", budget: {{usd: 100}}}}
""")
    gw = Gateway(thread, path).start()
    try:
        yield {"gw": gw, "family": fam, "backup": backup}
    finally:
        gw.stop()
        for server in (fam.server, backup):
            if server is not None:
                thread.call(server.stop())
        thread.close()
        os.environ.clear()
        os.environ.update(saved)


# --- each surface spoken by its own SDK -------------------------------------------------------------
def _openai_client(gw: Gateway) -> openai.OpenAI:
    return gw.client("sk-acme", timeout=15.0)


def _claude(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-acme", base_url=gw.url, max_retries=0, timeout=15.0)


def plain(surface: str, gw: Gateway, model: str = "m") -> tuple[str, tuple[int, int]]:
    """The answer text and the (input, output) tokens the client was told."""
    if surface == "chat":
        r = _openai_client(gw).chat.completions.create(model=model, messages=[{"role": "user", "content": ASK}])
        return r.choices[0].message.content or "", (r.usage.prompt_tokens, r.usage.completion_tokens)
    if surface == "messages":
        m = _claude(gw).messages.create(model=model, max_tokens=200, messages=[{"role": "user", "content": ASK}])
        return "".join(b.text for b in m.content if b.type == "text"), (m.usage.input_tokens, m.usage.output_tokens)
    resp = _openai_client(gw).responses.create(model=model, input=ASK)
    return resp.output_text, (resp.usage.input_tokens, resp.usage.output_tokens)


def streamed(surface: str, gw: Gateway, model: str = "m") -> str:
    if surface == "chat":
        chunks = _openai_client(gw).chat.completions.create(
            model=model, messages=[{"role": "user", "content": ASK}], stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if surface == "messages":
        with _claude(gw).messages.stream(model=model, max_tokens=200,
                                         messages=[{"role": "user", "content": ASK}]) as stream:
            return "".join(stream.text_stream)
    events = _openai_client(gw).responses.create(model=model, input=ASK, stream=True)
    out = []
    for event in events:
        assert event.type != "response.failed", event
        if event.type == "response.output_text.delta":
            out.append(event.delta)
    return "".join(out)


def cut_stream(surface: str, gw: Gateway) -> list[str]:
    """Read a stream that breaks mid-answer; what arrived before the surface's error."""
    long = "tell me a rather long story about a lighthouse keeper and the sea"
    seen: list[str] = []
    if surface == "chat":
        with pytest.raises(openai.APIError):
            for c in _openai_client(gw).chat.completions.create(
                    model="m", messages=[{"role": "user", "content": long}], stream=True):
                seen.extend(c.choices[0].delta.content or "" for _ in (0,) if c.choices)
    elif surface == "messages":
        with (pytest.raises(anthropic.APIStatusError),
              _claude(gw).messages.stream(model="m", max_tokens=200,
                                          messages=[{"role": "user", "content": long}]) as stream):
            for text in stream.text_stream:
                seen.append(text)
    else:
        types = [e.type for e in _openai_client(gw).responses.create(model="m", input=long, stream=True)]
        assert types[-1] == "response.failed" and "response.completed" not in types, types
        seen = [t for t in types if t == "response.created"]
    return seen


def tool_round_trip(surface: str, gw: Gateway) -> tuple[str, dict, str]:
    """Force a call, send its result back; ``(name, arguments, final text)``."""
    ask = [{"role": "user", "content": ASK}]
    if surface == "chat":
        client = _openai_client(gw)
        tool = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
        first = client.chat.completions.create(model="m", messages=ask, tools=[tool], tool_choice="required")
        call = first.choices[0].message.tool_calls[0]
        history = [*ask, first.choices[0].message.model_dump(exclude_none=True),
                   {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        second = client.chat.completions.create(model="m", messages=history, tools=[tool])
        return call.function.name, json.loads(call.function.arguments), second.choices[0].message.content or ""
    if surface == "messages":
        claude = _claude(gw)
        tool = {"name": "get_weather", "description": "weather", "input_schema": SCHEMA}
        first = claude.messages.create(model="m", max_tokens=200, messages=ask, tools=[tool],
                                       tool_choice={"type": "any"})
        use = next(b for b in first.content if b.type == "tool_use")
        history = [*ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}]
        second = claude.messages.create(model="m", max_tokens=200, messages=history, tools=[tool])
        return use.name, dict(use.input), "".join(b.text for b in second.content if b.type == "text")
    client = _openai_client(gw)
    tool = {"type": "function", "name": "get_weather", "parameters": SCHEMA}
    first = client.responses.create(model="m", input=ASK, tools=[tool], tool_choice="required")
    call = next(o for o in first.output if o.type == "function_call")
    items = [{"role": "user", "content": ASK},
             {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
             {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    second = client.responses.create(model="m", input=items, tools=[tool])
    return call.name, json.loads(call.arguments), second.output_text


# --- the scenario ------------------------------------------------------------------------------------
@pytest.mark.parametrize("surface", SURFACES)
def test_plain_and_streamed(world: dict, surface: str) -> None:
    gw, backup = world["gw"], world["backup"]
    before = backup.calls
    text, (tokens_in, tokens_out) = plain(surface, gw)
    assert text and tokens_in > 0 and tokens_out > 0
    assert streamed(surface, gw) == text
    assert backup.calls == before  # served by the family itself


@pytest.mark.parametrize("surface", SURFACES)
def test_tool_round_trip(world: dict, surface: str) -> None:
    world["family"].tool_call()
    name, args, final = tool_round_trip(surface, world["gw"])
    assert name == CALL[0] and set(args) == {"city"}
    if world["family"].name != "mock":
        assert args == CALL[1]
    assert final


@pytest.mark.parametrize("surface", SURFACES)
def test_usage_and_cost_charged_once(world: dict, surface: str) -> None:
    gw = world["gw"]
    before = spend(gw.url)
    _, (tokens_in, tokens_out) = plain(surface, gw)
    after = spend(gw.url)
    assert after["requests"] == before["requests"] + 1
    expected = (tokens_in * PRICE[0] + tokens_out * PRICE[1]) / 1e6
    assert after["spent_usd"] - before["spent_usd"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("surface", SURFACES)
def test_5xx_before_the_first_byte_fails_over(world: dict, surface: str) -> None:
    fam, gw, backup = world["family"], world["gw"], world["backup"]
    model = "m-fail" if fam.name == "mock" else "m"
    for read in (plain, streamed):
        before = backup.calls
        fam.fail()
        out = read(surface, gw, model)
        assert (out[0] if isinstance(out, tuple) else out)
        assert backup.calls == before + 1 and backup.requests[-1]["model"] == "backup-model"


@pytest.mark.parametrize("surface", SURFACES)
def test_cut_stream_ends_with_the_surface_error(world: dict, surface: str) -> None:
    backup = world["backup"]
    world["family"].cut()
    before = backup.calls
    assert cut_stream(surface, world["gw"])
    assert backup.calls == before  # bytes had reached the client: no silent switch of answers
