"""All deployments down: 503 (or a static answer) and a dead-letter entry; then ``gateway dlq`` list/replay/drop."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import orjson
import pytest

from gateway.cli import main as cli
from tests.support.failover_policy import ADMIN_KEY, failover_policy
from tests.support.mock_openai import Fault

MSG = [{"role": "user", "content": "keep this safe"}]


@pytest.fixture(params=["memory", "redis"])
def state(request, tmp_path) -> str:
    if request.param == "memory":
        return "backend: memory"
    url = request.getfixturevalue("redis_url")
    return f"backend: redis\n  redis_url: {url}"


@pytest.fixture
def make(make_gateway, upstream, backup, tmp_path):
    def build(**kw):
        return make_gateway(failover_policy(upstream.url, backup.url, dlq_path=str(tmp_path / "dlq.jsonl"), **kw))
    return build


def depth(gw) -> int:
    return gw.thread.call(gw.services.dlq.depth())


def admin_get(gw, path: str, key: str = ADMIN_KEY) -> tuple[int, dict]:
    req = urllib.request.Request(gw.url + path, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def dlq(gw, *args: str) -> int:
    return cli(["dlq", args[0], "--policy", str(gw.path), *args[1:]])


def replay(gw, *args: str) -> int:
    return dlq(gw, "replay", "--url", gw.url, "--admin-key", ADMIN_KEY, *args)


def listed(gw, capsys) -> list[dict]:
    capsys.readouterr()
    assert dlq(gw, "list", "--json") == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"id"')]


def test_all_down_503_dead_letter_then_replay_after_recovery(make, upstream, backup, state, capsys):
    gw = make(state=state)
    upstream.default = backup.default = Fault(500)
    client = gw.client("sk-acme")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="chat", messages=MSG, temperature=0.5)
    assert info.value.status_code == 503 and int(info.value.response.headers["retry-after"]) >= 1
    assert info.value.code == "upstream_unavailable"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="chat", messages=MSG, stream=True)
    assert depth(gw) == 2
    assert admin_get(gw, "/admin/dlq")[1]["depth"] == 2

    records = listed(gw, capsys)
    assert [r["body"] for r in records] == [
        {"model": "chat", "messages": MSG, "temperature": 0.5},
        {"model": "chat", "messages": MSG, "stream": True},  # as sent: not the usage option the gateway adds
    ]
    first = records[0]
    assert (first["tenant"], first["public_model"], first["endpoint"], first["action"]) == ("acme", "chat", "chat",
                                                                                         "error")
    assert [(a["deployment"], a["status"], a["error_kind"]) for a in first["attempts"]] == [
        ("primary/m-primary", 500, "5xx"), ("backup/m-backup", 500, "5xx")]
    assert all(a["duration_s"] >= 0 and a["offset_s"] >= 0 for a in first["attempts"])
    capsys.readouterr()
    assert dlq(gw, "list") == 0
    assert "tenant=acme  model=chat" in capsys.readouterr().out

    assert replay(gw, "--all", "--dry-run") == 0
    assert replay(gw, "--all") == 1  # still down: nothing leaves the queue, nothing is added twice
    assert depth(gw) == 2

    upstream.default = Fault()
    calls = upstream.calls
    capsys.readouterr()
    assert replay(gw, "--all") == 0
    assert "replayed 2, failed 0; depth now 0" in capsys.readouterr().out
    assert depth(gw) == 0
    assert upstream.calls == calls + 2
    assert [r["messages"] for r in upstream.requests[-2:]] == [MSG, MSG]
    assert upstream.requests[-1]["stream"] is True


def test_replay_and_drop_single_entries(make, upstream, backup, capsys):
    gw = make()
    upstream.default = backup.default = Fault(503)
    for i in range(3):
        with pytest.raises(openai.InternalServerError):
            gw.client("sk-acme").chat.completions.create(model="chat", messages=[{"role": "user", "content": f"m{i}"}])
    ids = [r["id"] for r in listed(gw, capsys)]
    assert len(ids) == 3
    assert dlq(gw, "drop", "--id", "0-1") == 1  # unknown id: nothing happens
    assert dlq(gw, "drop", "--id", ids[0]) == 0
    upstream.default = Fault()
    assert replay(gw, "--id", ids[2]) == 0
    assert [r["id"] for r in listed(gw, capsys)] == [ids[1]]
    assert upstream.requests[-1]["messages"][0]["content"] == "m2"
    assert dlq(gw, "drop", "--all") == 0
    assert depth(gw) == 0


def test_static_answer_when_exhausted_is_still_dead_lettered(make, upstream, backup):
    gw = make(on_exhausted="static")
    upstream.default = backup.default = Fault(500)
    client = gw.client("sk-acme")
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
    assert raw.parse().choices[0].message.content == "Sorry, the assistant is resting. Try again soon."
    assert raw.headers["x-gateway-exhausted"] == "static"
    chunks = list(client.chat.completions.create(model="chat", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Sorry")
    assert chunks[-1].usage.total_tokens == 0
    comp = client.completions.create(model="chat", prompt="hi")
    assert comp.choices[0].text.startswith("Sorry")
    assert depth(gw) == 3
    assert replay(gw, "--all") == 1  # a static answer is not a real one: entries stay
    assert depth(gw) == 3


def test_queue_is_bounded_and_counts_what_it_refused(make, upstream, backup):
    gw = make(dlq_max=2)
    upstream.default = backup.default = Fault(500)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            gw.client("sk-acme").chat.completions.create(model="chat", messages=MSG)
    assert admin_get(gw, "/admin/dlq") == (200, {"depth": 2, "written": 2, "dropped": 1})


def test_admin_routes_refuse_tenant_keys(make):
    gw = make()
    assert admin_get(gw, "/admin/dlq", key="sk-acme")[0] == 403
    req = urllib.request.Request(gw.url + "/admin/replay/chat", data=orjson.dumps({"model": "chat", "messages": MSG}),
                                 headers={"Authorization": "Bearer sk-acme", "content-type": "application/json",
                                          "x-gateway-replay-tenant": "acme"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 403


def test_stale_cached_answer_when_exhausted(make_gateway, upstream, backup, tmp_path):
    from gateway.clock import FakeClock

    clock = FakeClock()
    gw = make_gateway(failover_policy(upstream.url, backup.url, dlq_path=str(tmp_path / "dlq.jsonl"),
                                      on_exhausted="stale", cache="{enabled: true, ttl_s: 10}"), clock=clock)
    client = gw.client("sk-acme")
    fresh = client.chat.completions.create(model="chat", messages=MSG, temperature=0)
    clock.advance(15)  # past the TTL: no longer a hit, still kept for stale answers
    upstream.default = backup.default = Fault(500)
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=MSG, temperature=0)
    assert raw.headers["x-cache"] == "STALE" and raw.headers["x-gateway-exhausted"] == "stale"
    assert raw.parse().choices[0].message.content == fresh.choices[0].message.content
    assert upstream.calls == 2 and backup.calls == 1  # it did try the upstreams first
    with pytest.raises(openai.InternalServerError):  # nothing cached for this one: the 503
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "never seen"}],
                                       temperature=0)
    assert depth(gw) == 2
