"""Shared fixtures: real loopback servers, gateways built from policy text, a real redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.harness import Gateway, ServerThread
from tests.support.mock_anthropic import MockAnthropic, mock_anthropic  # noqa: F401
from tests.support.mock_openai import MockOpenAI
from tests.support.mock_responses import MockResponses
from tests.support.policy_hook import PolicyHook
from tests.support.redis_server import redis_server, redis_url  # noqa: F401
from tests.support.scripted_openai import ScriptedOpenAI


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.close()


@pytest.fixture
def upstream(servers: ServerThread) -> Iterator[MockOpenAI]:
    mock = servers.mock("upstream")
    yield mock
    servers.call(mock.stop())


@pytest.fixture
def backup(servers: ServerThread) -> Iterator[MockOpenAI]:
    mock = servers.mock("backup")
    yield mock
    servers.call(mock.stop())


@pytest.fixture
def claude(servers: ServerThread) -> Iterator[MockAnthropic]:
    """An Anthropic Messages upstream (its own wire format) on loopback."""
    server = servers.call(MockAnthropic().start())
    yield server
    servers.call(server.stop())


@pytest.fixture
def oai(servers: ServerThread) -> Iterator[ScriptedOpenAI]:
    """An OpenAI-compatible upstream whose answers a test can script (text or tool calls)."""
    mock = servers.call(ScriptedOpenAI("primary").start())
    yield mock
    servers.call(mock.stop())


@pytest.fixture
def judge(servers: ServerThread) -> Iterator[ScriptedOpenAI]:
    """A second scripted upstream: the model an ``llm_judge`` guardrail asks."""
    mock = servers.call(ScriptedOpenAI("judge").start())
    yield mock
    servers.call(mock.stop())


@pytest.fixture
def native(servers: ServerThread) -> Iterator[MockResponses]:
    """An upstream serving OpenAI's own ``/v1/responses`` (the lossless Responses path)."""
    server = servers.call(MockResponses().start())
    yield server
    servers.call(server.stop())


@pytest.fixture
def hook(servers: ServerThread) -> Iterator[PolicyHook]:
    """A guardrail webhook on loopback whose verdicts a test can script."""
    server = servers.call(PolicyHook().start())
    yield server
    servers.call(server.stop())


@pytest.fixture
def make_gateway(servers: ServerThread, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(policy_text: str, name: str = "policy.yaml", **kw) -> Gateway:
        path = tmp_path / name
        path.write_text(policy_text)
        gw = Gateway(servers, path, **kw).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()

