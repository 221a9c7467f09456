"""The scenarios ``python -m benchmarks run`` knows (names are stable) and the issue's target for each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.runner.agent_body import agent_chat, agent_messages
from benchmarks.runner.table import Row

CHAT = '{"model":"m","messages":[{"role":"user","content":"Say hello"}]}'
CACHEABLE = '{"model":"m","temperature":0,"messages":[{"role":"user","content":"Say hello"}]}'
STREAM = '{"model":"m","stream":true,"messages":[{"role":"user","content":"Say hello"}]}'
HOLD = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hold"}]}'  # the mock holds it open
MESSAGES = '{"model":"m","max_tokens":64,"messages":[{"role":"user","content":"Say hello"}]}'
RESPONSES = '{"model":"m","input":"Say hello","max_output_tokens":64,"store":false}'
AGENT_CHAT, AGENT_MESSAGES = agent_chat(), agent_messages()  # a coding agent's turn, ~125 KB each
AUTH = {"Authorization": "Bearer sk-bench"}

Check = Callable[[Row, dict[str, Row]], str]  # (gateway row, the scenario's other rows by proxy) -> verdict


def _verdict(ok: bool, text: str) -> str:
    return f"{text} {'ok' if ok else 'MISSED'}"


def _cpu_vs_bare(limit: float) -> Check:
    def check(row: Row, rows: dict[str, Row]) -> str:
        if row.cpu_ratio is None:
            return f"CPU <= {limit:g}x bare: needs --compare bare"
        return _verdict(row.cpu_ratio <= limit, f"CPU {row.cpu_ratio:.2f}x bare (<= {limit:g}x)")
    return check


def _vs_litellm(row: Row, rows: dict[str, Row]) -> str:
    other = rows.get("litellm")
    if other is None or other.load is None or not other.load.rps or row.load is None:
        return ""
    ratio = row.load.rps / other.load.rps
    return _verdict(ratio >= 30, f"{ratio:.0f}x LiteLLM req/s (>= 30x)")


def _redis_trips(row: Row, rows: dict[str, Row]) -> str:
    if row.redis_calls is None:
        return ""
    return _verdict(row.redis_calls <= 2, f"{row.redis_calls:.2f} Redis calls/request (<= 2)")


def _throughput_vs_bare(row: Row, rows: dict[str, Row]) -> str:
    bare = rows.get("bare")
    if bare is None or bare.load is None or not bare.load.rps or row.load is None:
        return ">= 1.5x bare req/s: needs --compare bare"
    ratio = row.load.rps / bare.load.rps
    return _verdict(ratio >= 1.5, f"{ratio:.2f}x bare req/s (>= 1.5x)")


def _added(p50: float | None, p99: float) -> Check:
    def check(row: Row, rows: dict[str, Row]) -> str:
        if row.added is None:
            return ""
        got50, got99 = row.added
        parts = [] if p50 is None else [_verdict(got50 < p50, f"added p50 {got50:.2f} ms (< {p50:g})")]
        return "; ".join([*parts, _verdict(got99 < p99, f"added p99 {got99:.2f} ms (< {p99:g})")])
    return check


def _rss_under(mib: float) -> Check:
    def check(row: Row, rows: dict[str, Row]) -> str:
        if row.rss_mib is None:
            return ""
        return _verdict(row.rss_mib < mib, f"RSS {row.rss_mib:.0f} MiB (< {mib:g})")
    return check


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    about: str
    kind: str = "wrk"  # wrk: closed loop | rate: paced wrk | ttft: streaming client | idle: held streams
    path: str = "/v1/chat/completions"
    body: str = CHAT
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    redis: bool = False
    cache: bool = False
    workers: int | None = None  # None: the run's --workers
    streams: int = 0  # idle: concurrent streams to hold open
    rate: int = 0  # rate: requests per second
    limits: bool = True  # off: the tenant has no rate limits and no budget (the floor scenarios)
    checks: tuple[Check, ...] = ()

    @property
    def baseline_key(self) -> tuple:
        """Scenarios with equal keys share their direct/bare/nginx/LiteLLM rows within one run."""
        return (self.kind, self.path, self.body, self.rate)


SCENARIOS = {s.name: s for s in (
    Scenario("full-memory", "full policy (auth, input checks, rpm/tpm/concurrency, budget, routing, metrics; "
             "cache off), memory state", checks=(_cpu_vs_bare(2.0), _vs_litellm)),
    Scenario("full-redis", "the same policy with its state in a private redis-server",
             redis=True, checks=(_cpu_vs_bare(2.5), _redis_trips, _vs_litellm)),
    Scenario("cache-hit", "cache on, every request a HIT (warmed once; temperature 0)", body=CACHEABLE,
             cache=True, checks=(_throughput_vs_bare,)),
    Scenario("floor", "auth, input checks, routing and metrics only (no limits, no budget, cache off), memory "
             "state: the plumbing every request pays", limits=False),
    Scenario("cache-hit-floor", "cache hits of a tenant without limits or budget (what the limits add to a hit)",
             body=CACHEABLE, cache=True, limits=False, checks=(_throughput_vs_bare,)),
    Scenario("latency-500", "full policy, memory state, paced at 500 req/s (wrk, 8 connections, 16 ms apart)",
             kind="rate", rate=500, checks=(_added(0.3, 1.5),)),
    Scenario("stream", "time to first token of a streamed chat answer, one client, back to back",
             kind="ttft", body=STREAM, checks=(_added(None, 2.0),)),
    Scenario("idle-streams-1k", "RSS with 1,000 concurrent streams held open by the mock", kind="idle",
             body=HOLD, streams=1000),
    Scenario("idle-streams-10k", "RSS with 10,000 concurrent streams held open by the mock", kind="idle",
             body=HOLD, streams=10000, checks=(_rss_under(1024),)),
    Scenario("messages", "full policy, memory state, Anthropic /v1/messages", path="/v1/messages",
             body=MESSAGES, headers={**AUTH, "anthropic-version": "2023-06-01"}),
    Scenario("responses", "full policy, memory state, OpenAI /v1/responses (store: false)", path="/v1/responses",
             body=RESPONSES),
    Scenario("agent-chat", "full policy, memory state, a coding agent's turn: 24 tool schemas, a 20 KB system "
             "prompt and 100 messages (~125 KB)", body=AGENT_CHAT),
    Scenario("agent-messages", "the same turn on Anthropic /v1/messages (what Claude Code sends)",
             path="/v1/messages", body=AGENT_MESSAGES, headers={**AUTH, "anthropic-version": "2023-06-01"}),
    Scenario("workers-2", "full policy, memory state, --workers 2 (pinned with the mock: see README)",
             workers=2, checks=(_vs_litellm,)),
)}
