"""The recorded agent fixtures are well-formed and secret-free, and replay against loopback servers:
the recorder answers them as it answered the real agents, and the Responses mock accepts real Codex bodies."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pydantic
import pytest
import pytest_asyncio
from aiohttp import web
from openai.types.responses import ResponseStreamEvent

from tests.support.mock_responses import MockResponses
from tests.support.record_agent import Recorder, make_app

pytestmark = pytest.mark.timeout(30)

FIXTURES = Path(__file__).parent / "fixtures" / "agents"
CLAUDE = "claude_code_messages.json"
CODEX = ("codex_responses.json", "codex_responses_gpt-5.5.json")
EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def requests_in(fixture: dict[str, Any]) -> list[dict[str, Any]]:
    """The main request, then the recorded follow-ups (path, headers, body)."""
    extra = [fixture[k] for k in ("followup", "title_request") if k in fixture]
    return [{"path": fixture["path"], "headers": fixture["headers"], "body": fixture["body"]}, *extra]


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


@pytest_asyncio.fixture
async def recorder(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    log = tmp_path / "calls.jsonl"
    runner = web.AppRunner(make_app(Recorder(log), tool_turn=True), access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", log
    await runner.cleanup()


@pytest.mark.parametrize("name", [CLAUDE, *CODEX])
def test_fixture_shape_and_no_secrets(name: str) -> None:
    fixture = load(name)
    assert fixture["captured_with"].split()[0] in ("claude-code", "codex-cli")
    assert fixture["other_calls"] and all(isinstance(c, str) for c in fixture["other_calls"])
    for req in requests_in(fixture):
        headers = {k.lower(): v for k, v in req["headers"].items()}
        assert not {"host", "content-length"} & headers.keys()
        assert headers.get("x-api-key", "<ANTHROPIC_API_KEY>") == "<ANTHROPIC_API_KEY>"
        assert headers.get("authorization", "Bearer <OPENAI_API_KEY>") == "Bearer <OPENAI_API_KEY>"
        assert req["body"]["stream"] is True and req["body"]["model"]


def test_claude_code_request_fields() -> None:
    fixture = load(CLAUDE)
    body, headers = fixture["body"], fixture["headers"]
    assert fixture["path"] == "/v1/messages?beta=true"
    assert headers["anthropic-version"] == "2023-06-01" and headers["x-app"] == "cli"
    assert "claude-code-20250219" in headers["anthropic-beta"].split(",")
    assert body["thinking"] == {"type": "adaptive"} and body["max_tokens"] > 0
    assert {t["name"] for t in body["tools"]} >= {"Bash", "Read", "Edit", "Write"}
    assert any(b.get("cache_control") for b in body["system"])
    assert "system" in {m["role"] for m in body["messages"]}  # mid-conversation system message
    last = fixture["followup"]["body"]["messages"][-1]["content"][0]
    assert last["type"] == "tool_result"


def test_codex_request_fields() -> None:
    lite, classic = load(CODEX[0])["body"], load(CODEX[1])["body"]
    for body in (lite, classic):
        assert body["store"] is False and body["include"] == ["reasoning.encrypted_content"]
        assert "reasoning" in body and body["prompt_cache_key"]
    assert "tools" not in lite and lite["input"][0]["type"] == "additional_tools"
    assert {t["type"] for t in classic["tools"]} >= {"function", "custom", "web_search"}
    follow = load(CODEX[1])["followup"]["body"]["input"]
    assert [i["type"] for i in follow[-2:]] == ["function_call", "function_call_output"]


async def test_recorder_replays_fixtures(recorder: tuple[str, Path]) -> None:
    base, log = recorder
    sent = []
    async with aiohttp.ClientSession() as session:
        for name in (CLAUDE, *CODEX):
            for req in requests_in(load(name)):
                sent.append(req["body"])
                async with session.post(base + req["path"], json=req["body"]) as resp:
                    assert resp.status == 200
                    events = sse(await resp.text())
                if req["path"].startswith("/v1/messages"):
                    names = [e for e, _ in events]
                    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
                    assert "content_block_delta" in names
                else:
                    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
                    assert events[-1][0] == "response.completed"
                    for _, data in events:
                        EVENTS.validate_python(data)
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["body"] for e in logged] == sent


async def test_mock_responses_accepts_codex_bodies() -> None:
    outputs = []
    async with MockResponses() as server, aiohttp.ClientSession() as session:
        for name in CODEX:
            for req in requests_in(load(name)):
                async with session.post(server.url + "/responses", json=req["body"]) as resp:
                    assert resp.status == 200
                    events = sse(await resp.text())
                for _, data in events:
                    EVENTS.validate_python(data)
                assert events[-1][0] == "response.completed"
                outputs.append(events[-1][1]["response"]["output"][0])
    lite, classic, follow = outputs
    assert lite["type"] == "message"  # no top-level function tools
    assert classic["type"] == "function_call" and classic["name"] == "exec_command"
    assert follow["type"] == "message" and follow["content"][0]["text"].startswith("Tool output: ")
