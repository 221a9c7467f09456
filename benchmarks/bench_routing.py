"""What routing and failover cost: per-decision micro-benchmarks, then wrk through the gateway.

Part 1 (in-process): microseconds per router decision (nine ``large_when`` rules, complexity score
included), per balancer ordering for each strategy, and per breaker check.

Part 2 (method of benchmarks/REFERENCE.md: mock upstreams and the gateway on CPU 0, ``wrk -t2 -c32`` on
CPU 1, measured in the same run), requests/s and latency for:

- ``direct model``: a model with one healthy deployment (the baseline);
- ``routed model``: a virtual model whose nine rules are all evaluated (none matches) -> small;
- ``failover, 500s``: the primary answers 500 to everything (breaker threshold out of reach), so every
  request makes a failed attempt and is served by the backup;
- ``failover, breaker open``: the primary refuses connections and its breaker is open, so requests
  skip it without a network call and the backup serves.

Usage: ``python benchmarks/bench_routing.py [--duration 10] [--connections 32]``. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    WRK_COLUMNS,
    free_port,
    missing_tool,
    post_lua,
    run_wrk,
    spawn_gateway,
    spawn_mock,
    stop_all,
    wait_port,
    wrk_cells,
)

DOWN = b'{"error":{"message":"down","type":"server_error"}}'

POLICY = """
version: 1
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{up}/v1", api_key: sk-up}}
  sick: {{type: openai, base_url: "http://127.0.0.1:{sick}/v1", api_key: sk-up}}
  gone: {{type: openai, base_url: "http://127.0.0.1:{gone}/v1", api_key: sk-up, timeouts: {{connect_s: 1}}}}
models:
  m:
    context_window: 8000
    deployments: [{{provider: up, model: m}}]
  big:
    context_window: 128000
    deployments: [{{provider: up, model: big}}]
  auto:
    route:
      small: m
      large: big
      large_when:
        - header: {{x-gateway-tier: large}}
        - tenant: [nobody]
        - has_tools: true
        - has_images: true
        - response_format: json_schema
        - messages_over: 8
        - matches: "(?i)\\\\b(sql|regex)\\\\b"
        - score_over: 0.6
        - prompt_tokens_over: 2000
  flaky:
    context_window: 8000
    deployments: [{{provider: sick, model: m}}, {{provider: up, model: m}}]
  dead:
    context_window: 8000
    deployments: [{{provider: gone, model: m}}, {{provider: up, model: m}}]
retry: {{attempts: 1, backoff_ms: 0}}
circuit_breaker: {{failures: 1000000000, cooldown_s: 3600}}
cache: {{enabled: false}}
logging: {{access_log: "off"}}
tenants:
  bench:
    api_keys: [sk-bench]
    models: "*"
  nobody:
    api_keys: [sk-nobody]
    models: [auto]
"""

BODY = '{{"model":"{model}","messages":[{{"role":"user","content":"Say hello to the team"}}]}}'


def per_op_us(fn, n: int = 20000) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def micro() -> None:
    from gateway.clock import SYSTEM_CLOCK
    from gateway.policy.loader import load_policy_text
    from gateway.routing.balancer import Balancer
    from gateway.routing.breaker import CircuitBreaker
    from gateway.routing.rules import RouteFacts, first_match

    policy = load_policy_text(textwrap.dedent(POLICY.format(up=1, sick=2, gone=3)))
    route = policy.models["auto"].route
    body = {"model": "auto", "messages": [{"role": "user", "content": "Say hello to the team, please. " * 20}]}
    headers = {"content-type": "application/json"}
    print("part 1: in-process cost per operation")
    print(f"  router decision, 9 rules, none matches (score computed) {per_op_us(lambda: first_match(route, RouteFacts(body, headers, 'bench', 150))):8.2f} us")
    balancer = Balancer(random.Random(1))
    flaky = policy.models["flaky"]
    for strategy in ("fallback", "weighted", "least_busy", "latency"):
        model = dataclasses.replace(flaky, strategy=strategy)
        print(f"  balancer order, 2 deployments, {strategy:<10}                    "
              f"{per_op_us(lambda m=model: balancer.order(m, lambda n: False)):8.2f} us")
    breaker = CircuitBreaker("x", SYSTEM_CLOCK)
    print(f"  breaker allow + success                                   {per_op_us(lambda: (breaker.allow(), breaker.success())):8.2f} us")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    micro()
    if missing_tool("wrk"):
        print("wrk not found (apt-get install wrk): part 2 skipped")
        return 1
    tmp = Path(tempfile.mkdtemp())
    up, sick, gone, gw = free_port(), free_port(), free_port(), free_port()
    (tmp / "policy.yaml").write_text(textwrap.dedent(POLICY.format(up=up, sick=sick, gone=gone)))
    procs = [spawn_mock(up), spawn_mock(sick, DOWN, status=500), spawn_gateway(tmp / "policy.yaml", gw)]
    try:
        for port in (up, sick, gw):
            wait_port(port)
        url = f"http://127.0.0.1:{gw}/v1/chat/completions"
        for model in ("m", "auto", "flaky", "dead"):
            r = httpx.post(url, headers={"Authorization": "Bearer sk-bench"},
                           json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
            r.raise_for_status()
        rows = []
        for name, model in (("direct model", "m"), ("routed model (9 rules)", "auto"),
                            ("failover, primary 500s", "flaky"), ("failover, breaker open", "dead")):
            lua = tmp / f"{model}.lua"
            lua.write_text(post_lua(BODY.format(model=model), {"Authorization": "Bearer sk-bench"}))
            if model == "dead":  # open the dead primary's breaker: lower the threshold, then reload
                (tmp / "policy.yaml").write_text(textwrap.dedent(POLICY.format(up=up, sick=sick, gone=gone)).replace(
                    "failures: 1000000000", "failures: 1"))
                time.sleep(2.5)
                for _ in range(3):
                    httpx.post(url, headers={"Authorization": "Bearer sk-bench"}, timeout=10,
                               json={"model": "dead", "messages": [{"role": "user", "content": "hi"}]})
                metrics = httpx.get(f"http://127.0.0.1:{gw}/metrics", timeout=10).text
                opened = any("gone/m" in line and 'state="open"' in line and line.endswith(" 1.0")
                             for line in metrics.splitlines())
                print(f"  (dead primary's breaker open before the run: {opened})")
            rows.append((name, run_wrk(url, args.duration, args.connections, lua)))
        print(f"part 2: wrk -t2 -c{args.connections} -d{args.duration}s through the gateway")
        print(f"  {'scenario':<28} {WRK_COLUMNS}")
        for name, r in rows:
            print(f"  {name:<28} {wrk_cells(r)}")
    finally:
        stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
