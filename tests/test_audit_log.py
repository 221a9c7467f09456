"""The audit file, upstream redaction, review sampling and the feedback loop, end to end.

Real parts: the openai SDK -> the gateway -> a real mock upstream; the ``gateway review`` CLI reads
the same state the gateway wrote (the memory backend's journal, or a real redis-server).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import orjson
import pytest

from gateway.cli import main as cli_main
from tests.support.policies import basic_policy
from tests.support.prom import scrape

PII = ("Hi, I'm Jane (jane.doe@example.com, +1 415-555-2671). Card 4111 1111 1111 1111, "
       "IBAN DE89 3704 0044 0532 0130 00, ticket ACME-004211.")
RAW = ("jane.doe@example.com", "415-555-2671", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "ACME-004211")
SECRETS = ("sk-upstream-secret", "sk-backup-secret", "sk-acme", "sk-audited-tenant")


def audited_policy(upstream_url: str, tmp_path: Path, audit: str = "{bodies: true, redact: ['ACME-\\d{6}']}",
                   extra: str = "") -> str:
    tenant = f"""
audited:
  api_keys: [sk-audited-tenant]
  models: [small]
  audit: {audit}
{extra}"""
    defaults = f"logging: {{access_log: '{tmp_path / 'access.jsonl'}', audit_path: '{tmp_path / 'audit.jsonl'}'}}"
    return basic_policy(upstream_url, extra_tenant=tenant, defaults=defaults,
                        state=f"backend: memory\n  dlq_path: {tmp_path / 'state.jsonl'}")


def wait_lines(path: Path, n: int, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]
            if len(lines) >= n:
                return lines
        time.sleep(0.02)
    raise AssertionError(f"{path} has fewer than {n} lines")


def post(url: str, key: str | None, body: dict) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=orjson.dumps(body), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def test_audit_file_has_redacted_bodies_and_no_keys(make_gateway, upstream, tmp_path):
    gw = make_gateway(audited_policy(upstream.url, tmp_path))
    client = gw.client("sk-audited-tenant")
    msg = [{"role": "user", "content": PII + " My gateway key is sk-audited-tenant, the provider's sk-upstream-secret"}]
    client.chat.completions.create(model="small", messages=msg, extra_headers={"x-request-id": "aud-1"})
    list(client.chat.completions.create(model="small", messages=msg, stream=True,
                                        extra_headers={"x-request-id": "aud-2"}))
    gw.client("sk-acme").chat.completions.create(model="small", messages=msg)  # acme is not audited
    lines = wait_lines(tmp_path / "audit.jsonl", 2)
    gw.stop()
    assert [line["request_id"] for line in lines] == ["aud-1", "aud-2"]
    plain, streamed = lines
    sent = plain["request"]["messages"][0]["content"]
    for marker in ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]", "[REDACTED]", "[SECRET]"):
        assert marker in sent
    # the mock echoes the prompt, so the answers carried the PII too: redacted as well
    assert "[EMAIL]" in plain["response"]["choices"][0]["message"]["content"]
    assert "[CARD]" in streamed["response"]["streamed_text"]
    assert plain["tenant"] == "audited" and plain["status"] == 200 and plain["deployment"] == "upstream/small-a"
    everything = (tmp_path / "audit.jsonl").read_text() + (tmp_path / "access.jsonl").read_text()
    for raw in RAW + SECRETS:
        assert raw not in everything, raw
    # the upstream itself got the original text: redact_upstream is off for this tenant
    assert "jane.doe@example.com" in upstream.requests[0]["messages"][0]["content"]


def test_redact_upstream_rewrites_what_the_provider_sees(make_gateway, upstream, tmp_path):
    gw = make_gateway(audited_policy(upstream.url, tmp_path, audit="{redact: ['ACME-\\d{6}']}",
                                     extra="  redact_upstream: true"))
    out = gw.client("sk-audited-tenant").chat.completions.create(
        model="small", messages=[{"role": "user", "content": PII}])
    sent = upstream.requests[-1]["messages"][0]["content"]
    for raw in RAW:
        assert raw not in sent
    assert "[EMAIL]" in sent and "[IBAN]" in sent and "[REDACTED]" in sent
    assert out.choices[0].message.content == f"Echo: {sent}"
    gw.client("sk-acme").chat.completions.create(model="small", messages=[{"role": "user", "content": PII}])
    assert upstream.requests[-1]["messages"][0]["content"] == PII  # other tenants are untouched
    assert not (tmp_path / "audit.jsonl").exists()  # bodies: false -> no audit file


def test_review_sampling_and_cli(make_gateway, upstream, tmp_path, capsys):
    gw = make_gateway(audited_policy(upstream.url, tmp_path, audit="{sample_rate: 0.5}"))
    client = gw.client("sk-audited-tenant")
    ids = [f"rev-{i}" for i in range(40)]
    for rid in ids:
        client.chat.completions.create(model="small", messages=[{"role": "user", "content": "mail x@y.example"}],
                                       extra_headers={"x-request-id": rid})
    gw.stop()  # waits for pending review writes
    expected = [rid for rid in ids if zlib.crc32(rid.encode()) < 0.5 * 2**32]
    assert 5 < len(expected) < 35
    capsys.readouterr()
    assert cli_main(["review", "list", "--policy", str(gw.path), "--json"]) == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["request_id"] for r in rows] == expected
    assert rows[0]["tenant"] == "audited" and rows[0]["model"] == "small" and rows[0]["review"] is True
    assert rows[0]["request"]["messages"][0]["content"] == "mail [EMAIL]"
    assert cli_main(["review", "done", "--policy", str(gw.path), rows[0]["id"]]) == 0
    assert capsys.readouterr().out == "1 record(s) marked done\n"
    assert cli_main(["review", "list", "--policy", str(gw.path), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(expected) - 1
    assert cli_main(["review", "list", "--policy", str(gw.path), "--limit", "2"]) == 0
    out = capsys.readouterr()
    assert [line.split()[4] for line in out.out.splitlines()] == expected[1:3]
    assert "model=small route=-  status=200 outcome=ok" in out.out and out.err == "2 record(s)\n"


def test_feedback_loop(make_gateway, upstream, tmp_path, capsys):
    gw = make_gateway(audited_policy(upstream.url, tmp_path,
                                     audit="{bodies: true, categories: [billing, code]}"))
    client = gw.client("sk-audited-tenant")
    for rid in ("fb-1", "fb-2", "fb-3"):
        client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-request-id": rid})
    gw.client("sk-acme").chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}],
                                                 extra_headers={"x-request-id": "acme-1"})
    url = gw.base_url + "/feedback"
    key = "sk-audited-tenant"
    status, body = post(url, key, {"request_id": "fb-1", "score": 0.25, "category": "billing",
                                   "comment": "wrong invoice total, reach me at jane@example.com"})
    assert status == 201 and body["model"] == "small" and body["score"] == 0.25
    assert post(url, key, {"request_id": "fb-2", "label": "good", "category": "poetry"})[0] == 201
    assert post(url, key, {"request_id": "fb-3", "label": "bad"})[0] == 201
    # errors: unknown id, another tenant's request, bad fields, no key
    assert post(url, key, {"request_id": "nope", "score": 1})[0] == 404
    assert post(url, key, {"request_id": "acme-1", "score": 1})[0] == 404
    assert post(url, key, {"request_id": "fb-1", "score": 1.5})[1]["error"]["param"] == "score"
    assert post(url, key, {"request_id": "fb-1", "label": "meh"})[1]["error"]["param"] == "label"
    assert post(url, key, {"request_id": "fb-1"})[0] == 400
    assert post(url, None, {"request_id": "fb-1", "score": 1})[0] == 401
    assert post(url, "sk-acme", {"request_id": "acme-1", "score": 1})[0] == 201
    s = scrape(gw.url)
    fb = "llm_gateway_feedback_total"
    assert s.value(fb, tenant="audited", model="small", route="none", category="billing", label="score") == 1
    assert s.value(fb, tenant="audited", category="other", label="good") == 1  # poetry: not in the policy
    assert s.value(fb, tenant="audited", category="none", label="bad") == 1
    assert s.value(fb) == 4
    assert s.value("llm_gateway_feedback_score_count", model="small") == 4
    assert s.value("llm_gateway_feedback_score_sum", model="small") == pytest.approx(0.25 + 1 + 0 + 1)
    assert "poetry" not in s.text
    gw.stop()
    capsys.readouterr()
    assert cli_main(["review", "feedback", "--policy", str(gw.path), "--tenant", "audited", "--json"]) == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["request_id"], r["score"], r["category"]) for r in rows] == [
        ("fb-1", 0.25, "billing"), ("fb-2", 1.0, "poetry"), ("fb-3", 0.0, None)]
    assert rows[0]["comment"] == "wrong invoice total, reach me at [EMAIL]"
    audit = [orjson.loads(x) for x in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    assert [a["request_id"] for a in audit if a["type"] == "feedback"] == ["fb-1", "fb-2", "fb-3"]


def test_feedback_reaches_any_replica_through_redis(make_gateway, upstream, redis_url, tmp_path):
    text = basic_policy(upstream.url, state=f"backend: redis\n  redis_url: {redis_url}")
    first = make_gateway(text, name="a.yaml")
    second = make_gateway(text, name="b.yaml")
    first.client("sk-acme").chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}],
                                                    extra_headers={"x-request-id": "shared-1"})
    deadline = time.monotonic() + 5  # the first replica stores its record just after answering
    while (answer := post(second.base_url + "/feedback", "sk-acme", {"request_id": "shared-1", "score": 0.9}))[0] \
            == 404 and time.monotonic() < deadline:
        time.sleep(0.02)
    status, body = answer
    assert status == 201 and body["model"] == "small"
    s = scrape(second.url)
    assert s.value("llm_gateway_feedback_total", tenant="acme", model="small") == 1
    # every backend call of the feedback path was measured
    assert s.value("llm_gateway_state_duration_seconds_count", op="get") >= 1
    assert s.value("llm_gateway_state_duration_seconds_count", op="log_append") == 1


def test_log_files_rotate_and_stdout_gets_the_same_lines(tmp_path, capsys):
    from gateway.observability.jsonlog import LineSink

    path = tmp_path / "access.jsonl"
    sink = LineSink(f"stdout,{path}", max_bytes=1000, backups=2)
    for i in range(100):
        sink.add(orjson.dumps({"i": i, "pad": "x" * 40}))
        if i % 10 == 9:
            sink.flush()
    sink.close()
    out = [orjson.loads(line)["i"] for line in capsys.readouterr().out.splitlines()]
    assert out == list(range(100))
    kept = [path.with_name(f"access.jsonl{suffix}") for suffix in (".2", ".1", "")]
    assert all(p.exists() for p in kept) and not path.with_name("access.jsonl.3").exists()
    assert all(p.stat().st_size <= 1000 for p in kept)
    lines = [orjson.loads(line)["i"] for p in kept for line in p.read_bytes().splitlines()]
    assert lines == list(range(100))[-len(lines):] and len(lines) >= 10  # whole lines, newest kept, in order


def test_feedback_window_is_per_tenant_and_zero_turns_it_off(make_gateway, upstream, tmp_path):
    gw = make_gateway(audited_policy(upstream.url, tmp_path, audit="{feedback_ttl_s: 0}"))
    gw.client("sk-audited-tenant").chat.completions.create(
        model="small", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "off-1"})
    gw.client("sk-acme").chat.completions.create(
        model="small", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "on-1"})
    status, body = post(gw.base_url + "/feedback", "sk-audited-tenant", {"request_id": "off-1", "score": 1})
    assert status == 404 and "feedback is off" in body["error"]["message"]
    assert post(gw.base_url + "/feedback", "sk-acme", {"request_id": "on-1", "score": 1})[0] == 201


def test_a_key_read_from_api_key_file_is_redacted_from_audit_records(make_gateway, upstream, tmp_path):
    file_key = "fileKEY0f9a8b7c6d5e4"  # not token-shaped: only knowing the key can redact it
    (tmp_path / "upstream.key").write_text(file_key + "\n")
    policy = audited_policy(upstream.url, tmp_path).replace(
        "api_key: sk-upstream-secret", f"api_key_file: {tmp_path / 'upstream.key'}")
    gw = make_gateway(policy)
    msg = [{"role": "user", "content": f"the provider key is {file_key}, keep it"}]
    gw.client("sk-audited-tenant").chat.completions.create(model="small", messages=msg,
                                                           extra_headers={"x-request-id": "aud-file"})
    (line,) = wait_lines(tmp_path / "audit.jsonl", 1)
    gw.stop()
    text = orjson.dumps(line).decode()
    assert line["request_id"] == "aud-file"
    assert file_key not in text
    assert "[SECRET]" in line["request"]["messages"][0]["content"]
