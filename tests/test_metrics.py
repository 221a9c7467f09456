"""``/metrics`` after scripted traffic: exact counter values, read with prometheus-client's parser.

Real parts only: the openai SDK -> the gateway on loopback -> a real mock upstream (and a backup).
Stage-dependent series (cache, rate limits, budgets, breakers, DLQ) are asserted when the stage is
in the stage list, so this file holds whatever the tree currently builds.
"""

from __future__ import annotations

import openai
import orjson
import pytest

from tests.support.mock_openai import Fault
from tests.support.policies import basic_policy
from tests.support.prom import scrape

MSG = [{"role": "user", "content": "hello there"}]
NO_RETRY = "retry: {attempts: 1, backoff_ms: 0}"


@pytest.fixture
def gw(make_gateway, upstream, backup):
    return make_gateway(basic_policy(upstream.url, backup.url, defaults=NO_RETRY))


def test_successes_plain_and_streamed(gw):
    client = gw.client("sk-acme")
    for _ in range(3):
        client.chat.completions.create(model="small", messages=MSG)
    list(client.chat.completions.create(model="small", messages=MSG, stream=True))
    s = scrape(gw.url)
    ok = {"tenant": "acme", "model": "small", "provider": "upstream", "status_class": "2xx", "outcome": "ok"}
    assert s.value("llm_gateway_requests_total", **ok) == 4
    assert s.value("llm_gateway_requests_total") == 4
    assert s.value("llm_gateway_request_duration_seconds_count", tenant="acme", model="small") == 4
    assert s.value("llm_gateway_overhead_seconds_count", model="small") == 4
    assert s.value("llm_gateway_upstream_duration_seconds_count", model="small", provider="upstream") == 4
    assert s.value("llm_gateway_time_to_first_token_seconds_count", model="small", provider="upstream") == 1
    # the mock's usage is exact: 2 prompt words, 3 answer words per request
    assert s.value("llm_gateway_tokens_total", tenant="acme", model="small", type="prompt") == 8
    assert s.value("llm_gateway_tokens_total", tenant="acme", model="small", type="completion") == 12
    assert s.value("llm_gateway_cost_usd_total", tenant="acme", model="small") == pytest.approx(32e-6)
    assert s.value("llm_gateway_upstream_attempts_total", deployment="upstream/small-a") == 4
    assert s.value("llm_gateway_upstream_errors_total") == 0
    assert s.value("llm_gateway_requests_in_flight") == 0
    assert s.value("llm_gateway_overhead_seconds_sum") >= 0


def test_rejections_are_4xx_with_bounded_labels(gw):
    with pytest.raises(openai.AuthenticationError):
        gw.client("sk-wrong").chat.completions.create(model="small", messages=MSG)
    with pytest.raises(openai.NotFoundError):
        gw.client("sk-acme").chat.completions.create(model="gpt-made-up-123", messages=MSG)
    with pytest.raises(openai.NotFoundError):  # beta may not use large
        gw.client("sk-beta").chat.completions.create(model="large", messages=MSG)
    with pytest.raises(openai.BadRequestError):
        gw.client("sk-acme").chat.completions.create(model="small", messages=[])
    s = scrape(gw.url)
    assert s.value("llm_gateway_requests_total", tenant="unknown", model="other", provider="none",
                   status_class="4xx", outcome="unauthorized") == 1
    # the input check names no model until the whole request passed: unknown model and bad body alike
    assert s.value("llm_gateway_requests_total", tenant="acme", model="other", status_class="4xx",
                   outcome="rejected") == 2
    assert s.value("llm_gateway_requests_total", tenant="beta", model="other", status_class="4xx",
                   outcome="rejected") == 1
    assert s.value("llm_gateway_requests_total", status_class="4xx") == 4
    # a model name the policy does not know never becomes a label value
    assert "gpt-made-up-123" not in s.text
    assert s.value("llm_gateway_upstream_attempts_total") == 0


def test_upstream_errors_and_fallback_to_backup(gw, upstream, backup):
    upstream.push(Fault(500), Fault(429))
    client = gw.client("sk-acme")
    client.chat.completions.create(model="small", messages=MSG)
    client.chat.completions.create(model="small", messages=MSG)
    s = scrape(gw.url)
    assert s.value("llm_gateway_upstream_errors_total", deployment="upstream/small-a", kind="5xx") == 1
    assert s.value("llm_gateway_upstream_errors_total", deployment="upstream/small-a", kind="429") == 1
    assert s.value("llm_gateway_upstream_attempts_total", deployment="upstream/small-a") == 2
    assert s.value("llm_gateway_upstream_attempts_total", deployment="backup/small-b") == 2
    assert s.value("llm_gateway_upstream_fallbacks_total", model="small") == 2
    assert s.value("llm_gateway_upstream_retries_total") == 0
    assert s.value("llm_gateway_requests_total", provider="backup", status_class="2xx", outcome="ok") == 2
    assert backup.calls == 2


def test_retries_on_the_same_deployment(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url, defaults="retry: {attempts: 3, backoff_ms: 0}"))
    upstream.push(Fault(502), Fault(503))
    gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    s = scrape(gw.url)
    assert s.value("llm_gateway_upstream_retries_total", deployment="upstream/small-a") == 2
    assert s.value("llm_gateway_upstream_attempts_total", deployment="upstream/small-a") == 3
    assert s.value("llm_gateway_upstream_errors_total", deployment="upstream/small-a", kind="5xx") == 2
    assert s.value("llm_gateway_requests_total", provider="upstream", outcome="ok") == 1


def test_every_deployment_failing_is_a_5xx(make_gateway, upstream, backup, tmp_path):
    gw = make_gateway(basic_policy(upstream.url, backup.url, defaults=NO_RETRY,
                                   state=f"backend: memory\n  dlq_path: {tmp_path / 'dlq.jsonl'}"))
    upstream.push(Fault(500))
    backup.push(Fault(500))
    with pytest.raises(openai.APIStatusError) as info:
        gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    assert info.value.status_code >= 500
    s = scrape(gw.url)
    assert s.value("llm_gateway_requests_total", status_class="5xx") == 1
    assert s.value("llm_gateway_upstream_errors_total", kind="5xx") == 2
    assert s.value("llm_gateway_dlq_depth") == 1
    assert s.value("llm_gateway_dlq_records_total", result="written") == 1
    assert s.value("llm_gateway_dlq_records_total", result="dropped") == 0


def test_per_tenant_false_drops_the_tenant_label(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url, defaults="metrics: {per_tenant: false}"))
    gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    gw.client("sk-beta").chat.completions.create(model="small", messages=MSG)
    s = scrape(gw.url)
    assert s.value("llm_gateway_requests_total", tenant="", model="small", outcome="ok") == 2
    assert not any(lbl.get("tenant") for lbl in s.series("llm_gateway_requests_total"))
    assert 'tenant="acme"' not in s.text and 'tenant="beta"' not in s.text


def test_policy_reloads_and_policy_info(gw):
    s = scrape(gw.url)
    assert s.series("llm_gateway_policy_info") == [{"sha256": gw.services.holder.current.digest}]
    assert s.value("llm_gateway_policy_reloads_total", result="success") == 0
    text = gw.path.read_text()
    gw.path.write_text(text + "\n# a comment changes the digest\n")
    assert gw.reload() is True
    gw.path.write_text("version: 1\nnot_a_key: 1\n")
    assert gw.reload() is False
    assert gw.reload() is False
    s = scrape(gw.url)
    assert s.value("llm_gateway_policy_reloads_total", result="success") == 1
    assert s.value("llm_gateway_policy_reloads_total", result="failure") == 2
    assert s.series("llm_gateway_policy_info") == [{"sha256": gw.services.holder.current.digest}]


def test_in_flight_counts_a_running_request(gw, upstream):
    upstream.push(Fault(delay_s=0.6))
    gw.thread.call(_start_request(gw))
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if scrape(gw.url).value("llm_gateway_requests_in_flight") == 1:
            break
        time.sleep(0.05)
    assert scrape(gw.url).value("llm_gateway_requests_in_flight") == 1
    while time.monotonic() < deadline and scrape(gw.url).value("llm_gateway_requests_total") < 1:
        time.sleep(0.05)
    s = scrape(gw.url)
    assert s.value("llm_gateway_requests_in_flight") == 0 and s.value("llm_gateway_requests_total") == 1


async def _start_request(gw) -> None:
    import asyncio

    client = gw.aclient("sk-acme")
    asyncio.get_running_loop().create_task(client.chat.completions.create(model="small", messages=MSG))


def test_circuit_breaker_state_gauge(make_gateway, upstream, backup):
    gw = make_gateway(basic_policy(upstream.url, backup.url, defaults=NO_RETRY + "\ncircuit_breaker: "
                                   "{failures: 2, cooldown_s: 600}"))
    upstream.default = Fault(500)
    client = gw.client("sk-acme")
    for _ in range(3):
        client.chat.completions.create(model="small", messages=MSG)
    s = scrape(gw.url)
    assert s.value("llm_gateway_circuit_breaker_state", deployment="upstream/small-a", state="open") == 1
    assert s.value("llm_gateway_circuit_breaker_state", deployment="upstream/small-a", state="closed") == 0
    assert s.value("llm_gateway_circuit_breaker_state", deployment="backup/small-b", state="closed") == 1
    assert s.value("llm_gateway_upstream_errors_total", deployment="upstream/small-a", kind="circuit_open") == 1
    assert s.value("llm_gateway_upstream_attempts_total", deployment="upstream/small-a") == 2
    assert upstream.calls == 2


def test_cache_hits_misses_and_cost_saved(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url, defaults="cache: {enabled: true, ttl_s: 600}"))
    client = gw.client("sk-acme")
    for _ in range(3):
        client.chat.completions.create(model="small", messages=MSG, temperature=0)
    s = scrape(gw.url)
    assert s.value("llm_gateway_cache_requests_total", tenant="acme", model="small", result="miss") == 1
    assert s.value("llm_gateway_cache_requests_total", tenant="acme", model="small", result="hit") == 2
    assert s.value("llm_gateway_requests_total", tenant="acme", model="small", status_class="2xx") == 3
    assert upstream.calls == 1
    # a hit costs nothing and saves what the miss cost: 2 prompt + 3 completion tokens at 1$/2$ per 1M
    assert s.value("llm_gateway_cost_usd_total", tenant="acme") == pytest.approx(8e-6)
    assert s.value("llm_gateway_cost_saved_usd_total", tenant="acme", model="small") == pytest.approx(16e-6)
    assert s.value("llm_gateway_tokens_total", type="prompt") == 2
    assert s.value("llm_gateway_upstream_attempts_total") == 1
    assert s.value("llm_gateway_cache_events_total", event="hits") == 2  # the cache's own counters
    assert s.value("llm_gateway_cache_events_total", event="misses") == 1


def test_access_log_line_per_request(make_gateway, upstream, tmp_path):
    path = tmp_path / "logs" / "access.jsonl"
    gw = make_gateway(basic_policy(upstream.url, defaults=f"logging: {{access_log: '{path}'}}"))
    client = gw.client("sk-acme")
    client.chat.completions.with_raw_response.create(model="small", messages=MSG,
                                                     extra_headers={"x-request-id": "req-one"})
    with pytest.raises(openai.AuthenticationError):
        gw.client("sk-nope-secret-key").chat.completions.create(model="small", messages=MSG)
    gw.stop()  # flushes the buffered lines
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["request_id"] == "req-one" and first["tenant"] == "acme" and first["key"] == "acme#0"
    assert (first["model"], first["deployment"], first["status"], first["outcome"]) == (
        "small", "upstream/small-a", 200, "ok")
    assert (first["prompt_tokens"], first["completion_tokens"]) == (2, 3)
    assert first["cost_usd"] == pytest.approx(8e-6)
    assert first["duration_ms"] >= first["overhead_ms"] >= 0 and first["upstream_ms"] > 0
    assert first["attempts"][0]["deployment"] == "upstream/small-a" and first["attempts"][0]["status"] == 200
    assert lines[1]["status"] == 401 and lines[1]["tenant"] == "unknown"
    text = path.read_text()
    assert "sk-acme" not in text and "sk-nope-secret-key" not in text and "sk-upstream-secret" not in text


def test_rate_limit_decisions_and_429s(make_gateway, upstream):
    from gateway.clock import FakeClock

    gw = make_gateway(basic_policy(upstream.url, extra_tenant="lim:\n  api_keys: [sk-lim]\n  models: [small]\n"
                                   "  rate_limit: {rpm: 20}\n"), clock=FakeClock())
    client = gw.client("sk-lim")
    for _ in range(20):
        client.chat.completions.create(model="small", messages=MSG)
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="small", messages=MSG)
    s = scrape(gw.url)
    rl = "llm_gateway_ratelimit_decisions_total"
    # under 10% of the limit left (2 of 20) counts as near_limit: the 19th and 20th requests
    assert s.value(rl, tenant="lim", decision="ok") == 18
    assert s.value(rl, tenant="lim", decision="near_limit") == 2
    assert s.value(rl, tenant="lim", decision="over_limit") == 3
    assert s.value("llm_gateway_requests_total", tenant="lim", status_class="4xx", outcome="over_limit") == 3
    assert s.value("llm_gateway_requests_total", tenant="lim", status_class="2xx") == 20
    assert s.value("llm_gateway_ratelimit_events_total", event="backend_errors") == 0
    assert upstream.calls == 20


def test_budget_downgrade_and_budget_gauges(make_gateway, upstream):
    auto = "auto:\n  route: {small: small, large: large, large_when: [{header: {x-gateway-tier: large}}]}\n"
    gw = make_gateway(basic_policy(upstream.url, extra_models=auto, extra_tenant=(
        "rich:\n  api_keys: [sk-rich]\n  models: [small, large, auto]\n"
        "  budget: {usd: 1, soft: 0.00002, on_soft: downgrade}\n")))
    client = gw.client("sk-rich")
    client.chat.completions.create(model="large", messages=MSG, max_tokens=8)  # 2*10 + 3*20 = 80e-6 USD
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="large", messages=MSG, max_tokens=8)
        assert raw.headers["x-gateway-downgraded"] == "true"
    s = scrape(gw.url)
    assert s.value("llm_gateway_budget_downgrades_total", tenant="rich") == 2
    assert s.value("llm_gateway_budget_decisions_total", tenant="rich", decision="downgraded") == 2
    assert s.value("llm_gateway_budget_decisions_total", tenant="rich", decision="ok") == 1
    assert s.value("llm_gateway_cost_usd_total", tenant="rich", model="large") == pytest.approx(80e-6)
    assert s.value("llm_gateway_cost_usd_total", tenant="rich", model="small") == pytest.approx(2 * 8e-6)
    assert s.value("llm_gateway_requests_total", tenant="rich", model="large", provider="upstream") == 3
    assert s.value("llm_gateway_budget_spent_usd", tenant="rich") == pytest.approx(96e-6)
    assert s.value("llm_gateway_budget_limit_usd", tenant="rich") == 1
    assert s.value("llm_gateway_budget_remaining_ratio", tenant="rich") == pytest.approx(1 - 96e-6)
    assert s.series("llm_gateway_budget_remaining_ratio") == [{"tenant": "rich"}]  # acme/beta have none


def test_state_backend_latency_and_errors(make_gateway, upstream, redis_server, redis_url):
    gw = make_gateway(basic_policy(upstream.url, state=f"backend: redis\n  redis_url: {redis_url}\n"
                                   "  timeout_ms: 500", defaults="cache: {enabled: true}"))
    client = gw.client("sk-acme")
    client.chat.completions.create(model="small", messages=MSG)
    import time

    deadline = time.monotonic() + 5  # complete's call (settle, feedback record) runs just after the answer
    while True:
        s = scrape(gw.url)
        ops = {lbl["op"] for lbl in s.series("llm_gateway_state_duration_seconds_count")}
        if s.value("llm_gateway_state_duration_seconds_count", op="fused") >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert "fused" in ops  # other stages add theirs
    assert s.value("llm_gateway_state_errors_total") == 0
    redis_server.stop()
    client.chat.completions.create(model="small", messages=MSG)  # every stage degrades, none fails
    before = s

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        s = scrape(gw.url)
        if s.value("llm_gateway_state_errors_total", op="fused") >= 1:  # complete's: settle and record
            break
        time.sleep(0.05)
    assert s.value("llm_gateway_state_errors_total", op="fused") >= 1
    assert s.value("llm_gateway_state_errors_total") > before.value("llm_gateway_state_errors_total")
    assert s.value("llm_gateway_requests_total", status_class="2xx") == 2


def test_connect_errors_by_deployment_and_kind(make_gateway, backup):
    from tests.support.redis_server import free_port

    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    gw = make_gateway(basic_policy(closed, backup.url, defaults=NO_RETRY))
    gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    s = scrape(gw.url)
    assert s.value("llm_gateway_upstream_errors_total", deployment="upstream/small-a", kind="connect") == 1
    assert s.value("llm_gateway_upstream_fallbacks_total", model="small") == 1
    assert s.value("llm_gateway_requests_total", provider="backup", outcome="ok") == 1


def test_timeout_and_stream_cut_kinds(make_gateway, upstream, backup):
    gw = make_gateway(basic_policy(upstream.url, backup.url, defaults=NO_RETRY))
    client = gw.client("sk-acme")
    upstream.push(Fault(black_hole=True))  # no first byte within first_byte_s (2 s): timeout, backup serves
    assert client.chat.completions.create(model="small", messages=MSG).choices
    upstream.push(Fault(cut_after=0))  # cut before the first chunk: transparent failover
    assert list(client.chat.completions.create(model="small", messages=MSG, stream=True))
    upstream.push(Fault(cut_after=1))  # cut after the first chunk reached the client: an error event
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="small", messages=MSG, stream=True))
    s = scrape(gw.url)
    assert s.value("llm_gateway_upstream_errors_total", deployment="upstream/small-a", kind="timeout") == 1
    assert s.value("llm_gateway_upstream_errors_total", deployment="upstream/small-a", kind="stream_cut") == 2
    assert s.value("llm_gateway_upstream_errors_total", deployment="backup/small-b") == 0


def test_no_created_series_and_process_metrics_in_one_process(gw):
    gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    s = scrape(gw.url)
    assert s.value("llm_gateway_requests_total") == 1
    assert "_created" not in s.text  # counters and histograms export no creation timestamps
    assert s.value("process_cpu_seconds_total") > 0
    assert s.value("process_resident_memory_bytes") > 0
    assert s.series("python_info")
    assert s.series("python_gc_collections_total")
