"""State backend calls and Redis round trips per request on the full-policy miss path (issue 15).

Sequential requests (so no two requests share a Redis pipeline) through ``gateway serve`` with
auth, input checks, rpm/tpm/concurrency limits, a budget, routing and metrics, cache off. Backend
calls are read from ``llm_gateway_state_duration_seconds_count`` (every call of every stage, by
op); on Redis, ``set_many`` writes a batch of feedback records (``audit.feedback_ttl_s``) in the
background, one call per tenant every 50 ms, not awaited by any request (``set`` before the batches). On Redis, ``INFO commandstats`` counts the commands the server ran, and with one request at a
time each command is one round trip.

Then the state layer alone (``--micro``, this tree only): the state work of one request as the
five calls it took before issue 15 (``ACQUIRE`` rpm+concurrency with tpm peeks, budget ``RESERVE``,
``ACQUIRE`` tpm, ``RELEASE``, ``SETTLE``, each through ``backend.run``) against the two fused calls,
sequentially, on the memory backend and on a private Redis: CPU microseconds per request.

Usage: ``python benchmarks/bench_state_calls.py [--requests 200] [--micro 20000]``. Needs ``redis-server``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import free_port, spawn_gateway, spawn_mock, start_redis, stop_all, wait_port  # noqa: E402
from benchmarks.runner.policies import gateway_policy  # noqa: E402

BODY = '{"model":"m","messages":[{"role":"user","content":"Say hello"}]}'

SCRAPE_OPS = ("budget_read", "log_len", "keys_expiry_stats")  # the gauges a /metrics scrape reads
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


async def _micro_backend(backend, n: int) -> tuple[float, float]:
    """CPU us per request: (five separate calls, two fused calls)."""
    from gateway.budget.ledger import (
        RESERVE,
        SETTLE,
        Charge,
        ReserveOp,
        ScopeArgs,
        SettleOp,
        reserve_call,
        settle_call,
    )
    from gateway.ratelimit.fused import AdmitOp, ReleaseOp, acquire_call
    from gateway.ratelimit.scripts import ACQUIRE, RELEASE

    tag = "gw:{bench}:rl:t"
    rpm, conc, tpm = f"{tag}:rpm", f"{tag}:conc", (f"{tag}:tpm", f"{tag}:tpm:w")
    scope = ScopeArgs("gw:{bench}:bud:t:total", 10**15, None, True, False, 0)
    day = "gw:{bench}:spend:2027-01-01"
    big = 10**12

    def charge(rid: str) -> Charge:
        return Charge(rid, 10, (scope.key,), (0,), day, 60_000, (("m:usd", 10), ("m:n", 1), ("m:in", 9), ("m:out", 9)))

    async def separate(i: int) -> None:
        rid = f"s{i}"
        await backend.run(ACQUIRE, *acquire_call(rid, False, [("R", big, 1, rpm, ""), ("C", big, 1, conc, ""),
                                                             ("P", big, 1, *tpm)]))
        await backend.run(RESERVE, *reserve_call([scope], rid, 60.0, 100, None))
        await backend.run(ACQUIRE, *acquire_call(rid, False, [("T", big, 40, *tpm)]))
        await backend.run(RELEASE, *ReleaseOp(rid, (conc,), [tpm], 18).redis_call())
        await backend.run(SETTLE, *settle_call(charge(rid), 60_000))

    async def fused(i: int) -> None:
        rid = f"f{i}"
        entries = [("R", big, 1, rpm, ""), ("C", big, 1, conc, ""), ("T", big, 40, *tpm)]
        await backend.run_fused([ReserveOp([scope], rid, 60.0, 100, None), AdmitOp(rid, False, entries, None, False)])
        await backend.run_fused([SettleOp(charge(rid), 60_000), ReleaseOp(rid, (conc,), [tpm], 18)])

    out = []
    for way in (separate, fused):
        for i in range(200):
            await way(-i - 1)
        start = time.process_time()
        for i in range(n):
            await way(i)
        out.append((time.process_time() - start) * 1e6 / n)
    return out[0], out[1]


def micro(n: int, redis_port: int) -> None:
    from gateway.state import MemoryBackend, RedisBackend

    async def run() -> None:
        for name, backend in (("memory", MemoryBackend()), ("redis", RedisBackend(f"redis://127.0.0.1:{redis_port}/0",
                                                                                   timeout_ms=5000))):
            count = n if name == "memory" else max(1, n // 10)
            five, two = await _micro_backend(backend, count)
            print(f"state layer, {name:<6}: 5 separate calls {five:6.0f} us CPU/request, "
                  f"2 fused calls {two:6.0f} us CPU/request ({count} requests)")
            await backend.close()

    asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--micro", type=int, default=0, help="also time the state layer alone for this many requests")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    up, rport, gw, gw_redis = free_port(), free_port(), free_port(), free_port()
    (tmp / "memory.yaml").write_text(gateway_policy(up))
    (tmp / "redis.yaml").write_text(gateway_policy(up, f"redis://127.0.0.1:{rport}/0"))
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
            per_call = {op: n for op, n in per_call.items() if op not in SCRAPE_OPS}
            ops = ", ".join(f"{op} {n:.2f}" for op, n in sorted(per_call.items()))
            print(f"{name:<7} backend calls/request {sum(per_call.values()):.2f} ({ops})")
            if client is not None:
                scripts = (per_cmd.get("evalsha", 0) + per_cmd.get("eval", 0)) / args.requests
                inner = sum(n for c, n in per_cmd.items() if c not in ("evalsha", "eval", "set", "get")) / args.requests
                print(f"{'':<7} round trips/request {sum(per_call.values()):.2f} (one call at a time: one each), "
                      f"script calls/request {scripts:.2f}, commands run by scripts/request {inner:.1f}")
        if args.micro:
            micro(args.micro, rport)
    finally:
        stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
