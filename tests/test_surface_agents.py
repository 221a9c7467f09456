"""Real agent requests (recorded from Claude Code and Codex, ``tests/fixtures/agents``) replayed through
the gateway, streamed as recorded, to a deployment of the agent's own API family and of the other one.

Each answers 200 with a well-formed event stream (Anthropic: message_start ... message_stop with
balanced content blocks; Responses: response.created ... response.completed, sequence numbers
0, 1, 2...), names what it dropped in ``x-gateway-dropped``, and sends the deployment what the agent
meant: Claude Code's mid-conversation system message folded into Anthropic's top-level ``system``,
Codex's ``additional_tools`` namespaces as tools, a tool call back under the agent's own tool name.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from openai.types.responses import ResponseStreamEvent

from tests.support.mock_anthropic import Reply
from tests.support.scripted_openai import Said

pytestmark = pytest.mark.timeout(60)

FIXTURES = Path(__file__).parent / "fixtures" / "agents"
CLAUDE, LITE, CLASSIC = "claude_code_messages.json", "codex_responses.json", "codex_responses_gpt-5.5.json"
EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
TIMEOUTS = "{connect_s: 1, first_byte_s: 5, total_s: 30}"
# What each recorded request loses on the way to chat (the same whatever the deployment).
DROPPED = {
    CLAUDE: {"cache_control", "context_management"},
    LITE: {"tools.custom", "include.reasoning.encrypted_content"},
    CLASSIC: {"tools.custom", "tools.tool_search", "tools.web_search", "include.reasoning.encrypted_content"},
}
LITE_TOOLS = {"functions__wait", "functions__request_user_input", "functions__request_user_input_async",
              "functions__send_message_to_user_async", "clock__sleep", "collaboration__followup_task",
              "collaboration__interrupt_agent", "collaboration__list_agents", "collaboration__send_message",
              "collaboration__spawn_agent", "collaboration__wait_agent"}
CLASSIC_TOOLS = {"exec_command", "write_stdin", "request_user_input", "view_image", "get_goal", "create_goal",
                 "update_goal"}
# The tool call the deployment answers each fixture's first request with: (flat chat name, arguments).
CALLS = {CLAUDE: ("Bash", {"command": "ls", "description": "List files"}),
         LITE: ("clock__sleep", {"duration_ms": 10}),
         CLASSIC: ("exec_command", {"cmd": "ls"})}


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())




@pytest.fixture
def gw(make_gateway, oai, claude):
    return make_gateway(textwrap.dedent(f"""\
        version: 1
        providers:
          openai: {{type: openai, base_url: "{oai.url}", api_key: sk-openai, timeouts: {TIMEOUTS}}}
          claude: {{type: anthropic, base_url: "{claude.url}", api_key: {claude.api_key}, timeouts: {TIMEOUTS}}}
        models:
          opus:
            context_window: 1000000
            aliases: [claude-opus-4-8]
            deployments: [{{provider: claude, model: claude-opus-4-8}}]
          gpt:
            context_window: 1000000
            aliases: [gpt-5.5, gpt-6.2-sol]
            deployments: [{{provider: openai, model: gpt-5.5}}]
        retry: {{attempts: 1, backoff_ms: 0}}
        cache: {{enabled: false}}
        tenants:
          acme: {{api_keys: [sk-acme], models: "*"}}
        """))


def replay(gw, request: dict[str, Any], model: str | None) -> httpx.Response:
    """POST a recorded request as the agent sent it, with the tenant's key and the policy's model name
    (``None``: the recorded name, which the policy knows as an alias)."""
    headers = {}
    for key, value in request["headers"].items():
        if key.lower() in ("content-type", "content-length", "accept-encoding"):
            continue
        headers[key] = {"<ANTHROPIC_API_KEY>": "sk-acme", "Bearer <OPENAI_API_KEY>": "Bearer sk-acme"}.get(value, value)
    body = {**request["body"], "model": model or request["body"]["model"], "stream": True}
    return httpx.post(gw.url + request["path"], json=body, headers=headers, timeout=30)


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every SSE event; each must have both lines."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def check_anthropic_stream(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The Anthropic event grammar; returns the message the events build."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    message = events[0][1]["message"]
    assert message["role"] == "assistant" and message["content"] == []
    blocks: dict[int, dict[str, Any]] = {}
    open_index: int | None = None
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(blocks)
            open_index = data["index"]
            blocks[open_index] = {**data["content_block"], "partial": ""}
        elif name == "content_block_delta":
            assert data["index"] == open_index
            block, delta = blocks[open_index], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                block["partial"] += delta["partial_json"]
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        else:
            assert name == "ping", name
    assert open_index is None and blocks
    for block in blocks.values():
        if block["type"] == "tool_use":
            block["input"] = json.loads(block["partial"])
    message["content"] = list(blocks.values())
    message["stop_reason"] = events[-2][1]["delta"]["stop_reason"]
    return message


def check_responses_stream(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The Responses event grammar (each event valid for the openai SDK); returns the final response."""
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    for name, data in events:
        assert name == data["type"]
        EVENTS.validate_python(data)
    added = [data["output_index"] for name, data in events if name == "response.output_item.added"]
    done = [data["output_index"] for name, data in events if name == "response.output_item.done"]
    final = events[-1][1]["response"]
    assert added == done == list(range(len(final["output"])))
    assert final["status"] == "completed"
    return final


def dropped(resp: httpx.Response) -> set[str]:
    return set(resp.headers.get("x-gateway-dropped", "").split(",")) - {""}


@pytest.mark.parametrize("model", ["opus", "gpt"])
def test_claude_code(gw, oai, claude, model):
    fixture = load(CLAUDE)
    name, args = CALLS[CLAUDE]
    if model == "opus":
        claude.push(Reply(text="", tool_calls=[(name, args)]), Reply(text="README.md and main.py."))
    else:
        oai.say(Said(calls=[(name, args)]), Said(text="README.md and main.py."))
    first = replay(gw, fixture, model)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("text/event-stream")
    message = check_anthropic_stream(sse(first.text))
    use = message["content"][-1]
    assert message["stop_reason"] == "tool_use"
    assert use["type"] == "tool_use" and use["name"] == name and use["input"] == args
    tools = {t["name"] for t in fixture["body"]["tools"]}
    if model == "opus":  # same family: the lossless path, the recorded body as sent, nothing dropped
        assert dropped(first) == set() and message["model"] == "claude-opus-4-8"
        sent = claude.requests[-1]
        assert sent == {**fixture["body"], "model": "claude-opus-4-8", "stream": True}
        assert claude.headers[-1]["anthropic-beta"] == fixture["headers"]["anthropic-beta"]
    else:
        assert dropped(first) == DROPPED[CLAUDE] and message["model"] == model
        sent = oai.requests[-1]
        assert [m["role"] for m in sent["messages"]] == ["system", "user", "system"]
        assert {t["function"]["name"] for t in sent["tools"]} == tools
        assert sent["reasoning_effort"] == "high"  # output_config.effort

    follow = replay(gw, fixture["followup"], model)
    assert follow.status_code == 200, follow.text
    answer = check_anthropic_stream(sse(follow.text))
    assert answer["content"][-1]["text"] == "README.md and main.py." and answer["stop_reason"] == "end_turn"
    recorded_id = fixture["followup"]["body"]["messages"][-1]["content"][0]["tool_use_id"]
    if model == "opus":
        assert claude.requests[-1]["messages"][-1]["content"][0]["tool_use_id"] == recorded_id
    else:
        assert oai.requests[-1]["messages"][-1] == {"role": "tool", "tool_call_id": recorded_id,
                                                    "content": "README.md\nmain.py"}

    title = replay(gw, fixture["title_request"], model)
    assert title.status_code == 200, title.text
    assert check_anthropic_stream(sse(title.text))["stop_reason"] == "end_turn"


@pytest.mark.parametrize("model", ["gpt", "opus"])
@pytest.mark.parametrize("name", [LITE, CLASSIC])
def test_codex(gw, oai, claude, name, model):
    fixture = load(name)
    flat, args = CALLS[name]
    if model == "opus":
        claude.push(Reply(text="", tool_calls=[(flat, args)]))
    else:
        oai.say(Said(calls=[(flat, args)]))
    resp = replay(gw, fixture, model)
    assert resp.status_code == 200, resp.text
    assert dropped(resp) == DROPPED[name]
    final = check_responses_stream(sse(resp.text))
    call = final["output"][-1]
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == args
    if name == LITE:  # back under the namespace and name Codex declared in its additional_tools item
        assert (call["namespace"], call["name"]) == ("clock", "sleep")
    else:
        assert call["name"] == flat and "namespace" not in call
    expected_tools = LITE_TOOLS if name == LITE else CLASSIC_TOOLS
    if model == "opus":
        sent = claude.requests[-1]
        assert {t["name"] for t in sent["tools"]} == expected_tools
        assert [m["role"] for m in sent["messages"]] == ["user"] and "You are Codex" in sent["system"]
    else:
        sent = oai.requests[-1]
        assert {t["function"]["name"] for t in sent["tools"]} == expected_tools
        assert sent["model"] == "gpt-5.5" and sent["reasoning_effort"] == fixture["body"]["reasoning"]["effort"]

    if "followup" in fixture:
        follow = replay(gw, fixture["followup"], model)
        assert follow.status_code == 200, follow.text
        answer = check_responses_stream(sse(follow.text))
        message = answer["output"][-1]
        assert message["type"] == "message" and message["content"][0]["text"].startswith(("Echo:", "Mock answer"))
        recorded = fixture["followup"]["body"]["input"][-1]
        if model == "opus":
            result = claude.requests[-1]["messages"][-1]["content"][0]
            assert result["type"] == "tool_result" and result["tool_use_id"] == recorded["call_id"]
        else:
            assert oai.requests[-1]["messages"][-1] == {"role": "tool", "tool_call_id": recorded["call_id"],
                                                        "content": recorded["output"]}


@pytest.mark.parametrize("name", [CLAUDE, LITE, CLASSIC])
def test_recorded_model_names_resolve_through_aliases(gw, oai, claude, name):
    """Agents keep their own model names; the policy's aliases map them (what the README advises)."""
    fixture = load(name)
    resp = replay(gw, fixture, None)
    assert resp.status_code == 200, resp.text
    if name == CLAUDE:
        assert check_anthropic_stream(sse(resp.text))["model"] == "claude-opus-4-8"
        assert claude.requests[-1]["model"] == "claude-opus-4-8" and oai.calls == 0
    else:
        check_responses_stream(sse(resp.text))
        assert oai.requests[-1]["model"] == "gpt-5.5" and claude.calls == 0
