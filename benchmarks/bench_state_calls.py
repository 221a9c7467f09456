"""State backend calls and Redis round trips per request on the full-policy miss path (issue 15).

Sequential requests (so no two requests share a Redis pipeline) through ``gateway serve`` with
auth, input checks, rpm/tpm/concurrency limits, a budget, routing and metrics, cache off. Backend
calls are read from ``llm_gateway_state_duration_seconds_count`` (every call of every stage, by
op); on Redis, ``INFO commandstats`` counts the commands the server ran, and with one request at a
time each command is one round trip.

Usage: ``python benchmarks/bench_state_calls.py [--requests 200]``. Needs ``redis-server``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import textwrap
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_proxy import BODY, POLICY  # noqa: E402
from benchmarks.common import free_port, spawn_gateway, spawn_mock, start_redis, stop_all, wait_port  # noqa: E402

_COUNT = re.compile(r'^llm_gateway_state_duration_seconds_count\{op="([^"]+)"\} ([\d.e+]+)$', re.M)


def state_calls(base: str) -> dict[str, float]:
    return {op: float(n) for op, n in _COUNT.findall(httpx.get(f"{base}/metrics").text)}


def commands(r: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in r.info("commandstats").items()
            if name not in ("cmdstat_info", "cmdstat_ping")}


def measure(base: str, n: int, r: redis.Redis | None) -> tuple[dict[str, float], dict[str, int]]:
    client = httpx.Client(headers={"Authorization": "Bearer sk-bench", "content-type": "application/json"})
    for _ in range(5):  # warm: connections, plans, script loads
        client.post(f"{base}/v1/chat/completions", content=BODY).raise_for_status()
    calls, cmds = state_calls(base), commands(r) if r else {}
    for _ in range(n):
        client.post(f"{base}/v1/chat/completions", content=BODY).raise_for_status()
    after, cmds_after = state_calls(base), commands(r) if r else {}
    per_call = {op: (after[op] - calls.get(op, 0)) / n for op in after if after[op] - calls.get(op, 0) > 0}
    per_cmd = {c: cmds_after[c] - cmds.get(c, 0) for c in cmds_after if cmds_after[c] - cmds.get(c, 0) > 0}
    return per_call, per_cmd


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    up, rport, gw, gw_redis = free_port(), free_port(), free_port(), free_port()
    policy = textwrap.dedent(POLICY.format(up=up)).replace("cache: {enabled: true, ttl_s: 60}\n", "")
    (tmp / "memory.yaml").write_text(policy)
    state = f'state: {{backend: redis, redis_url: "redis://127.0.0.1:{rport}/0", timeout_ms: 1000}}\n'
    (tmp / "redis.yaml").write_text(state + policy)
    procs = [spawn_mock(up), start_redis(rport, tmp)]
    try:
        for port in (up, rport):
            wait_port(port)
        procs += [spawn_gateway(tmp / "memory.yaml", gw), spawn_gateway(tmp / "redis.yaml", gw_redis)]
        wait_port(gw)
        wait_port(gw_redis)
        r = redis.Redis(port=rport)
        for name, port, client in (("memory", gw, None), ("redis", gw_redis, r)):
            per_call, per_cmd = measure(f"http://127.0.0.1:{port}", args.requests, client)
            ops = ", ".join(f"{op} {n:.2f}" for op, n in sorted(per_call.items()))
            print(f"{name:<7} backend calls/request {sum(per_call.values()):.2f} ({ops})")
            if client is not None:
                scripts = (per_cmd.get("evalsha", 0) + per_cmd.get("eval", 0)) / args.requests
                inner = sum(n for c, n in per_cmd.items() if c not in ("evalsha", "eval", "set", "get")) / args.requests
                print(f"{'':<7} round trips/request {sum(per_call.values()):.2f} (one call at a time: one each), "
                      f"script calls/request {scripts:.2f}, commands run by scripts/request {inner:.1f}")
    finally:
        stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
