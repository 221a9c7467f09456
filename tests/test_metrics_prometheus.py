"""A real Prometheus server (Debian package ``prometheus``) scrapes a running gateway.

Prometheus runs on a free loopback port with a temporary config (1 s scrape and rule evaluation,
the shipped alert rules loaded); the test asserts through its HTTP API that the gateway's series
arrive with the values the traffic produced, and that every alert rule evaluates without error
against them. Everything is bounded in time; the server is stopped by its pid.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest
import yaml

from tests.support.policies import basic_policy
from tests.support.redis_server import free_port

PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
ALERTS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yaml"
MSG = [{"role": "user", "content": "hello there"}]

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian package) missing")


def api(base: str, path: str, **params: str) -> dict:
    url = f"{base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = orjson.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def wait_for(check, timeout: float = 40.0, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


@pytest.fixture
def prometheus(tmp_path):
    def start(target: str) -> str:
        config = tmp_path / "prometheus.yml"
        shutil.copy(ALERTS, tmp_path / "alerts.yaml")
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yaml"],
            "scrape_configs": [{"job_name": "llm-gateway", "static_configs": [{"targets": [target]}]}],
        }))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append((subprocess.Popen([
            PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        ], stdout=log, stderr=log), log))
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: urllib.request.urlopen(base + "/-/ready", timeout=2).status == 200, what="prometheus ready")
        return base

    procs: list = []
    yield start
    for proc, log in procs:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_prometheus_scrapes_the_gateway(make_gateway, upstream, prometheus):
    gw = make_gateway(basic_policy(upstream.url, defaults="logging: {access_log: 'off'}"))
    client = gw.client("sk-acme")
    for _ in range(3):
        client.chat.completions.create(model="small", messages=MSG)
    list(client.chat.completions.create(model="small", messages=MSG, stream=True))
    base = prometheus(f"127.0.0.1:{gw.port}")

    def requests_total():
        rows = api(base, "query", query='sum(llm_gateway_requests_total{job="llm-gateway",outcome="ok"})')["result"]
        return rows and float(rows[0]["value"][1]) == 4.0

    wait_for(requests_total, what="llm_gateway_requests_total == 4 in Prometheus")
    up = api(base, "query", query='up{job="llm-gateway"}')["result"]
    assert [float(r["value"][1]) for r in up] == [1.0]
    series = api(base, "series", **{"match[]": '{__name__=~"llm_gateway_.+"}'})
    names = {s["__name__"] for s in series}
    for name in ("llm_gateway_requests_total", "llm_gateway_overhead_seconds_bucket",
                 "llm_gateway_time_to_first_token_seconds_count", "llm_gateway_tokens_total",
                 "llm_gateway_cost_usd_total", "llm_gateway_upstream_attempts_total", "llm_gateway_policy_info",
                 "llm_gateway_requests_in_flight", "llm_gateway_policy_reloads_total"):
        assert name in names, name
    tokens = api(base, "query", query='sum(llm_gateway_tokens_total{type="completion"})')["result"]
    assert float(tokens[0]["value"][1]) == 12.0
    info = api(base, "query", query="llm_gateway_policy_info")["result"]
    assert info[0]["metric"]["sha256"] == gw.services.holder.current.digest

    def rules_evaluated():
        groups = api(base, "rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return len(rules) > 10 and all(r.get("lastEvaluation", "").startswith("20") for r in rules) and rules

    rules = wait_for(rules_evaluated, what="every alert rule evaluated")
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    firing = [a for a in api(base, "alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []  # healthy traffic raises nothing
