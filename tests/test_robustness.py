"""Hostile and odd input never gets a 5xx, a traceback, a hang, a non-OpenAI error or a leaked secret.

A seeded fuzzer (``tests.support.fuzz``) mutates valid chat, completions and embeddings bodies field
by field and sends them, with odd headers, through a gateway whose policy turns on every stage (rate
limits, cache, routing with every rule kind, budget, audit with ``redact_upstream``, dead-letter,
metrics) against a real loopback mock upstream and a real redis-server. A few cases also script an
upstream failure; only those may answer 5xx. Failures are collected and reported with their seed
index so each is reproducible.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fuzz import Case, Fuzzer
from tests.support.mock_anthropic import MockAnthropic
from tests.support.mock_openai import Fault

SEED = 20_240_611
CASES = 1000  # per run on Redis; half as many on the memory backend
PROVIDER_KEYS = ["sk-upstream-fuzz-secret-0001", "sk-backup-fuzz-secret-0002", "sk-ant-fuzz-secret-0006"]
REDACTED_KEY = "sk-acme-fuzz-tenant-key-0003"  # tenant with redact_upstream: nothing it sends may come back
PLAIN_KEY = "sk-beta-fuzz-tenant-key-0004"
ADMIN_KEY = "sk-admin-fuzz-secret-0005"
TIGHT_KEY = "sk-tight-fuzz-tenant-key-0007"  # a tenant with a small token-per-minute limit
SECRETS = PROVIDER_KEYS + [REDACTED_KEY, PLAIN_KEY, ADMIN_KEY, TIGHT_KEY]
ERROR_KEYS = {"message", "type", "param", "code"}


def full_policy(upstream: str, backup: str, claude: str, state: str, tmp: Path) -> str:
    """Every stage on: limits (tenant, key, model), cache, routing (all rule kinds), budget, audit.

    Models are served by the OpenAI mock (``small``, ``large``, ``emb``), the Anthropic mock through the
    translating provider (``claude``) and the built-in mock provider (``demo``).
    """
    return f"""\
version: 1
state:
  {state}
  dlq_path: {tmp / 'dlq.jsonl'}
providers:
  upstream:
    type: openai
    base_url: {upstream}
    api_key: {PROVIDER_KEYS[0]}
    timeouts: {{connect_s: 1, first_byte_s: 3, total_s: 10}}
  backup:
    type: openai
    base_url: {backup}
    api_key: {PROVIDER_KEYS[1]}
    timeouts: {{connect_s: 1, first_byte_s: 3, total_s: 10}}
  claude:
    type: anthropic
    base_url: {claude}
    api_key: {PROVIDER_KEYS[2]}
    timeouts: {{connect_s: 1, first_byte_s: 3, total_s: 10}}
  builtin:
    type: mock
models:
  small:
    context_window: 4000
    max_output_tokens: 2000
    price: {{input: 1.0, output: 2.0}}
    context_fallback: large
    on_exhausted: stale
    aliases: [mini]
    deployments:
      - {{provider: upstream, model: small-a}}
      - {{provider: backup, model: small-b}}
  large:
    context_window: 32000
    price: {{input: 10.0, output: 20.0}}
    deployments:
      - {{provider: upstream, model: large-a}}
  emb:
    price: {{input: 0.1, output: 0.0}}
    deployments:
      - {{provider: upstream, model: emb-a}}
  claude:
    context_window: 200000
    price: {{input: 3.0, output: 15.0}}
    deployments:
      - {{provider: claude, model: claude-sonnet-4-5}}
  demo:
    context_window: 8000
    deployments:
      - {{provider: builtin, model: demo}}
  wide:
    price: {{input: 1.0, output: 60.0}}
    deployments:
      - {{provider: upstream, model: wide-a}}
  auto:
    route:
      small: small
      large: large
      large_when:
        - header: {{x-gateway-tier: large}}
        - tenant: [beta]
        - has_tools: true
        - has_images: true
        - response_format: json_schema
        - messages_over: 6
        - matches: "(?i)summar"
        - score_over: 0.6
        - prompt_tokens_over: 1500
retry: {{attempts: 2, backoff_ms: 0, max_backoff_ms: 0, deadline_s: 10}}
circuit_breaker: {{failures: 1000, cooldown_s: 1}}
cache: {{enabled: true, ttl_s: 60, nondeterministic: true}}
rate_limit:
  rpm: 100000
  tpm: 1000000000000
  concurrency: 50
  per_key: {{rpm: 100000, concurrency: 50}}
  models: {{small: {{rpm: 100000, tpm: 100000000}}}}
budget: {{usd: 100000, period: monthly, soft: 0.9, on_soft: downgrade}}
audit: {{bodies: true, sample_rate: 0.5, redact: ["fuzz-\\\\d+"]}}
admin:
  api_keys: [{ADMIN_KEY}]
logging: {{access_log: '{tmp / 'access.jsonl'}', audit_path: '{tmp / 'audit.jsonl'}'}}
tenants:
  acme:
    api_keys: [{REDACTED_KEY}]
    models: "*"
    redact_upstream: true
  beta:
    api_keys: [{PLAIN_KEY}]
    models: "*"
  tight:
    api_keys: [{TIGHT_KEY}]
    models: "*"
    rate_limit: {{tpm: 2000}}
"""


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def send(client: httpx.Client, port: int, case: Case) -> Answer:
    """httpx, or http.client for header values h11 refuses to send (spaces at the ends, control bytes)."""
    try:
        resp = client.post(case.path, content=case.body, headers=case.headers)
        return Answer(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.text)
    except httpx.LocalProtocolError:
        pass
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("POST", case.path, body=case.body, headers=case.headers)
        raw = conn.getresponse()
        text = raw.read().decode("utf-8", "replace")
        return Answer(raw.status, {k.lower(): v for k, v in raw.getheaders()}, text)
    finally:
        conn.close()


def error_shape(data: Any) -> str | None:
    """Why ``data`` is not an OpenAI error body, or None when it is one."""
    if not isinstance(data, dict) or set(data) != {"error"} or not isinstance(data["error"], dict):
        return f"not an error object: {str(data)[:200]}"
    err = data["error"]
    if set(err) != ERROR_KEYS:
        return f"error keys {sorted(err)}"
    if not isinstance(err["message"], str) or not err["message"] or not isinstance(err["type"], str):
        return f"error message/type: {err}"
    if "Traceback" in err["message"]:
        return "traceback in the message"
    return None


def stream_problem(text: str) -> str | None:
    """Why an SSE answer is malformed: an event that is not JSON, a bad error event, no clean end."""
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    if not events:
        return "stream without events"
    for event in events:
        if event == "[DONE]":
            continue
        try:
            data = json.loads(event)
        except ValueError:
            return f"event is not JSON: {event[:100]}"
        if isinstance(data, dict) and "error" in data:
            return error_shape(data)
    return None if events[-1] == "[DONE]" else "stream ended without [DONE] or an error event"


def check(case: Case, resp: Answer, scripted: bool) -> list[str]:
    """Every problem with one answer."""
    problems: list[str] = []
    if resp.status_code >= 500 and not scripted:
        problems.append(f"status {resp.status_code}")
    rid = resp.headers.get("x-request-id", "")
    if not rid or len(rid) > 128:
        problems.append(f"x-request-id {rid[:40]!r}")
    ctype = resp.headers.get("content-type", "")
    if resp.status_code >= 400:
        try:
            why = error_shape(resp.json())
        except ValueError:
            why = f"error body is not JSON ({ctype}): {resp.text[:200]!r}"
        if why:
            problems.append(why)
    elif ctype.startswith("text/event-stream"):
        why = stream_problem(resp.text)
        if why:
            problems.append(why)
    else:
        try:
            resp.json()
        except ValueError:
            problems.append(f"200 body is not JSON: {resp.text[:200]!r}")
    problems.extend(leaks(case, resp))
    return problems


def leaks(case: Case, resp: Answer) -> list[str]:
    """Secrets in the answer. A tenant without ``redact_upstream`` may get back what it sent itself."""
    sent = case.body.decode("utf-8", "replace")
    redacted_caller = REDACTED_KEY.encode() in case.headers.get("authorization", b"")
    where = resp.text + "\n" + "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
    return [f"leaked {s[:10]}..." for s in SECRETS if s in where and (redacted_caller or s not in sent)]


def health(client: httpx.Client, i: int) -> list[str]:
    try:
        status = client.get("/healthz").status_code
    except httpx.HTTPError as exc:
        return [f"#{i}: /healthz failed: {type(exc).__name__}: {exc}"]
    return [] if status == 200 else [f"#{i}: /healthz answered {status}"]


def run_cases(gw: Any, upstream: Any, seed: int, count: int) -> tuple[list[str], Counter[tuple[str, int]]]:
    """Send ``count`` fuzzed requests one by one: the report of every failing case, and how many
    answers each (path, status) got (so a fuzzer that only ever gets 400s is noticed)."""
    fuzzer = Fuzzer(seed, [REDACTED_KEY, PLAIN_KEY], SECRETS)
    report: list[str] = []
    seen: Counter[tuple[str, int]] = Counter()
    with httpx.Client(base_url=gw.url, timeout=15.0) as client:
        for i in range(count):
            case = fuzzer.case(i)
            scripted = fuzzer.rng.random() < 0.08
            if scripted:
                upstream.push(fuzzer.rng.choice([
                    Fault(status=500), Fault(status=503, headers={"retry-after": "1"}), Fault(status=429),
                    Fault(status=400), Fault(reset=True), Fault(cut_after=1), Fault(status=502, body=b"<html>")]))
            try:
                resp = send(client, gw.port, case)
            except (httpx.HTTPError, OSError, http.client.HTTPException) as exc:
                report.append(f"#{i} {case.note}: transport {type(exc).__name__}: {exc}")
                continue
            finally:
                upstream.script.clear()
            seen[(case.path, resp.status_code)] += 1
            problems = check(case, resp, scripted)
            if problems:
                report.append(f"#{i} {case.note} -> {resp.status_code}: {problems}")
            if i % 50 == 49:
                report.extend(health(client, i))
    return report, seen


@pytest.fixture
def claude(servers):
    server = servers.call(MockAnthropic(api_key=PROVIDER_KEYS[2]).start())
    yield server
    servers.call(server.stop())


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_fuzzed_requests_never_break_the_gateway(make_gateway, upstream, backup, claude, redis_url, tmp_path,
                                                 backend, caplog):
    state = f"backend: redis\n  redis_url: {redis_url}" if backend == "redis" else "backend: memory"
    gw = make_gateway(full_policy(upstream.url, backup.url, claude.url, state, tmp_path))
    seed = SEED if backend == "redis" else SEED + 1
    count = CASES if backend == "redis" else CASES // 2
    report, seen = run_cases(gw, upstream, seed, count)
    assert httpx.get(gw.url + "/healthz", timeout=5).status_code == 200
    reply = gw.client(REDACTED_KEY).chat.completions.create(
        model="small", messages=[{"role": "user", "content": "still there?"}])
    assert reply.choices[0].message.content == "Echo: still there?"
    assert not report, f"{len(report)} failing cases (seed {seed}):\n" + "\n".join(report[:40])
    # The mutations must leave enough requests valid to reach every stage and the upstreams.
    assert sum(n for (_, status), n in seen.items() if status == 200) >= count // 5, seen
    assert all(seen[(path, 200)] for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")), seen
    # A traceback logged by the gateway (a failing stage, complete() or audit record) is a bug even when
    # the client got a clean answer.
    bugs = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.name.startswith("gateway") and r.exc_info]
    assert not bugs, "\n".join(bugs[:20])
