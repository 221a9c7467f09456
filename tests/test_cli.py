"""The ``gateway`` command itself: --version, serve's help, admin-key errors, log formats, start-up checks."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
import orjson
import pytest

import gateway
from gateway.cli import build_parser, main
from gateway.observability.applog import JsonFormatter, log_format
from gateway.policy.loader import load_policy
from gateway.policy.reload import PolicyHolder
from tests.support.budget import budget_policy
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE_REDIS = """\
version: 1
state: {{backend: redis, redis_url: "redis://:hunter2@127.0.0.1:{port}/0", timeout_ms: 100}}
providers: {{mock: {{type: mock}}}}
models: {{demo: {{deployments: [{{provider: mock, model: m}}]}}}}
tenants: {{demo: {{api_keys: [sk-x], models: "*"}}}}
"""


def test_version_comes_from_the_package_metadata(capsys, monkeypatch):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"gateway {metadata.version('llm-gateway')}"

    def missing(_name: str) -> str:
        raise metadata.PackageNotFoundError(_name)

    monkeypatch.setattr(metadata, "version", missing)  # a plain checkout, never installed
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"gateway {gateway.__version__}"


def test_serve_help_states_the_bind_defaults():
    out = subprocess.run([sys.executable, "-m", "gateway", "serve", "--help"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    flat = " ".join(out.split())
    assert "--host" in out and "default: 127.0.0.1" in flat and "0.0.0.0 in a container" in flat
    assert "--port" in out and "default: 8080" in flat
    assert "--log-format" in out


def test_spend_without_an_admin_key_says_how_to_pass_one(make_gateway, upstream, capsys, monkeypatch):
    monkeypatch.delenv("GATEWAY_ADMIN_KEY", raising=False)
    gw = make_gateway(budget_policy(upstream.url))
    assert main(["spend", "--url", gw.url]) == 2
    err = capsys.readouterr().err
    assert "--admin-key" in err and "GATEWAY_ADMIN_KEY" in err and "admin.api_keys" in err


def test_spend_with_a_tenant_key_is_refused_with_the_fix(make_gateway, upstream, capsys, monkeypatch):
    monkeypatch.delenv("GATEWAY_ADMIN_KEY", raising=False)
    gw = make_gateway(budget_policy(upstream.url))
    assert main(["spend", "--url", gw.url, "--admin-key", "sk-acme"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 403" in err and "admin.api_keys" in err and "GATEWAY_ADMIN_KEY" in err and "--admin-key" in err


def test_dlq_replay_goes_through_the_admin_client(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GATEWAY_ADMIN_KEY", raising=False)
    policy = tmp_path / "p.yaml"
    policy.write_text(f"version: 1\nstate: {{backend: memory, dlq_path: {tmp_path / 'dlq.jsonl'}}}\n")
    assert main(["dlq", "replay", "--all", "--policy", str(policy), "--url", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "replay stopped" in err and "--admin-key" in err and "GATEWAY_ADMIN_KEY" in err


def test_json_log_lines_carry_time_level_logger_message_and_exception(monkeypatch):
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("gateway.test").makeRecord(
            "gateway.test", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    line = orjson.loads(JsonFormatter().format(record))
    assert line["level"] == "ERROR" and line["logger"] == "gateway.test" and line["message"] == "failed here"
    assert line["time"].endswith("Z") and "ValueError: boom" in line["exc"]
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "json")
    assert log_format(None) == "json" and log_format("text") == "text"
    monkeypatch.delenv("GATEWAY_LOG_FORMAT")
    assert log_format(None) == "text"


def test_unchanged_policy_reload_is_logged(tmp_path, caplog):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\n")
    policy = load_policy(str(path))
    holder = PolicyHolder(policy, str(path))
    with caplog.at_level(logging.INFO, logger="gateway.policy"):
        assert asyncio.run(holder.reload("SIGHUP")) is False
    assert holder.stats.unchanged == 1
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(f"policy unchanged (sha256 {policy.digest[:12]}" in line for line in lines), lines


def test_serve_warns_in_json_when_redis_does_not_answer_and_serves_anyway(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(UNREACHABLE_REDIS.format(port=free_port()))  # nothing listens there
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GATEWAY_LOG_FORMAT", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--policy", str(path), "--port", str(port),
                             "--log-format", "json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert "WARNING: Redis at redis://***@127.0.0.1:" in out and "does not answer" in out
    assert "hunter2" not in out + err
    lines = [orjson.loads(line) for line in err.splitlines() if line.strip()]  # every stderr line is JSON
    warned = [x for x in lines if x["logger"] == "gateway.serve" and x["level"] == "WARNING"]
    assert warned and "does not answer" in warned[0]["message"]
    assert all({"time", "level", "logger", "message"} <= x.keys() for x in lines)


def test_redis_ping_is_quiet_when_redis_answers(redis_url):
    from gateway.cli.serve import redis_problem
    from gateway.policy.loader import load_policy_text

    live = load_policy_text(f"version: 1\nstate: {{backend: redis, redis_url: '{redis_url}'}}\n", env={})
    assert redis_problem(live) is None
    dead = load_policy_text(f"version: 1\nstate: {{backend: redis, redis_url: 'redis://127.0.0.1:{free_port()}/0'}}\n",
                            env={})
    assert "does not answer" in (redis_problem(dead) or "")
    assert redis_problem(load_policy_text("version: 1\n", env={})) is None  # memory state: nothing to ping
