"""The fault matrix: process faults under a steady stream of SDK requests, counted client-side.

Two gateway processes (``python -m gateway serve``) share one real ``redis-server`` that holds rate
limits, budgets and the cache, and one loopback upstream. While eight SDK clients send chat, stream
and cacheable requests, Redis is killed and restarted, stalled (``DEBUG SLEEP``) or emptied
(``FLUSHALL``), a broken policy is reloaded (SIGHUP), or one replica is SIGKILLed. Each test prints
its figures and asserts: every request answered (lost 0), only 200 or the 429/503 that
``state.on_backend_error`` declares (each with ``retry-after``), no other 5xx.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis

from tests.support.mock_openai import Fault, MockOpenAI
from tests.support.policies import basic_policy
from tests.support.process import GatewayProcess
from tests.support.redis_server import RedisServer, redis_binary
from tests.support.steady import Tally, steady

LOAD_S = 6.0  # the load runs this long; faults happen inside it


@pytest.fixture
def debug_redis() -> Iterator[RedisServer]:
    """A real redis-server that accepts ``DEBUG SLEEP`` from loopback."""
    if redis_binary() is None:
        pytest.skip("redis-server binary not found")
    server = RedisServer(extra_args=("--enable-debug-command", "local"))
    server.start()
    yield server
    server.cleanup()


def matrix_policy(upstream: str, redis_url: str, tmp: Path, mode: str = "local") -> str:
    """Everything that touches Redis on: rate limits, a budget, the cache; 2 replicas."""
    state = (f"backend: redis\n  redis_url: {redis_url}\n  on_backend_error: {mode}\n  timeout_ms: 250\n"
             f"  replicas: 2\n  journal_dir: {tmp / 'journal'}")
    return basic_policy(upstream, state=state, defaults="""
        rate_limit: {rpm: 100000, tpm: 100000000, concurrency: 500}
        budget: {usd: 1000}
        cache: {enabled: true, ttl_s: 60}
        logging: {access_log: "off"}
    """)


@pytest.fixture
def replicas(upstream: MockOpenAI, debug_redis: RedisServer, tmp_path: Path) -> Iterator[Callable[..., list]]:
    started: list[GatewayProcess] = []

    def start(n: int = 2, mode: str = "local") -> list[GatewayProcess]:
        upstream.default = Fault(chunk_delay_s=0.005)  # streams stay open a little while
        policy = tmp_path / "policy.yaml"
        policy.write_text(matrix_policy(upstream.url, debug_redis.url, tmp_path, mode))
        for i in range(n):
            workdir = tmp_path / f"r{i}"
            workdir.mkdir()
            started.append(GatewayProcess(policy, workdir).start())
        return list(started)

    yield start
    for gw in started:
        gw.stop(10)


def run_with(urls: list[str], chaos: Callable[[], None], retry_connect: bool = False) -> tuple[Tally, float]:
    """The load for LOAD_S with ``chaos`` in a thread beside it; returns the tally and the chaos's duration."""
    took: list[float] = []

    def chaos_timed() -> None:
        t0 = time.monotonic()
        chaos()
        took.append(time.monotonic() - t0)

    async def main() -> Tally:
        thread = threading.Thread(target=chaos_timed)
        load = asyncio.create_task(steady(urls, LOAD_S, retry_connect=retry_connect))
        thread.start()
        tally = await load
        await asyncio.to_thread(thread.join, 30)
        return tally

    tally = asyncio.run(main())
    return tally, (took[0] if took else -1.0)


def assert_answered(tally: Tally, allowed: set[str], gateways: list[GatewayProcess]) -> None:
    assert tally.failures == [], tally.failures[:5]
    assert tally.lost == 0
    assert tally.wrong_text == 0
    assert tally.no_retry_after == 0
    assert set(tally.statuses) <= allowed, tally.statuses
    assert tally.of("200") > 100
    for gw in gateways:
        assert "Traceback" not in gw.log(), gw.log()[-3000:]


def readyz(gw: GatewayProcess) -> dict:
    try:
        with urllib.request.urlopen(gw.url + "/readyz", timeout=5) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return orjson.loads(err.read())


@pytest.mark.parametrize("mode", ["local", "deny"])
def test_redis_killed_and_restarted_under_load(replicas, debug_redis, mode):
    gateways = replicas(2, mode)

    def chaos() -> None:
        time.sleep(1.5)
        debug_redis.stop()  # SIGKILL
        time.sleep(2.0)
        debug_redis.start()

    tally, _ = run_with([g.url for g in gateways], chaos)
    print(f"\nRedis SIGKILLed for 2 s (on_backend_error: {mode}), 2 replicas, 8 clients: {tally.figures()}")
    allowed = {"200"} if mode == "local" else {"200", "503 rate_limit_unavailable", "503 budget_unavailable"}
    assert_answered(tally, allowed, gateways)
    if mode == "deny":
        assert tally.of("503") > 0  # the outage was felt, and declared
    assert debug_redis.running


def test_redis_stalled_by_debug_sleep_under_load(replicas, debug_redis):
    gateways = replicas(2)

    def chaos() -> None:
        with redis.Redis.from_url(debug_redis.url, socket_timeout=10) as r:
            for _ in range(3):
                time.sleep(0.5)
                r.execute_command("DEBUG", "SLEEP", "1")

    tally, took = run_with([g.url for g in gateways], chaos)
    print(f"\nRedis stalled 3 x 1 s (DEBUG SLEEP, timeout_ms 250), 2 replicas, 8 clients: {tally.figures()}; "
          f"stalls took {took:.1f} s")
    assert_answered(tally, {"200"}, gateways)
    assert took >= 3.0  # the stalls really happened


def test_redis_emptied_by_flushall_under_load(replicas, debug_redis):
    gateways = replicas(2)
    flushed = []

    def chaos() -> None:
        with redis.Redis.from_url(debug_redis.url, socket_timeout=10) as r:
            for _ in range(4):
                time.sleep(1.0)
                flushed.append(r.dbsize())
                r.flushall()

    tally, _ = run_with([g.url for g in gateways], chaos)
    print(f"\nRedis FLUSHALL x 4 (keys before each: {flushed}), 2 replicas, 8 clients: {tally.figures()}")
    assert_answered(tally, {"200"}, gateways)
    assert all(n > 0 for n in flushed)  # there was state to lose each time


def test_a_broken_policy_reloaded_under_load_keeps_the_old_one_serving(replicas, upstream):
    gateways = replicas(1)
    gw = gateways[0]
    good = gw.policy.read_text()
    broken = [good.replace("type: openai", "type: opnai", 1),  # a meaning error
              good + "\nbogus_key: 1\n",  # an unknown key
              good.replace("tenants:", "tenants: [", 1),  # not YAML
              # would lock the client out, if the unknown key did not refuse it
              good.replace("api_keys: [sk-acme]", "api_keys: [sk-other]", 1) + "\nbogus_key: 2\n"]
    errors: list[str] = []

    def chaos() -> None:
        assert gw.proc is not None
        for text in broken:
            time.sleep(1.0)
            gw.policy.write_text(text)
            gw.proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)
            errors.append(readyz(gw)["policy"]["last_reload_error"] or "")
        gw.policy.write_text(good)

    tally, _ = run_with([gw.url], chaos)
    reloads = readyz(gw)["policy"]["reloads"]
    print(f"\n4 broken policies reloaded by SIGHUP, 1 replica, 8 clients: {tally.figures()}; reloads {reloads}; "
          f"/readyz last_reload_error after each: {[e[:60] for e in errors]}")
    assert_answered(tally, {"200"}, gateways)
    assert reloads["failure"] >= 3
    assert sum(1 for e in errors if e) >= 3


def test_one_of_two_replicas_killed_the_other_serves_every_request(replicas):
    gateways = replicas(2)
    victim = gateways[1]

    def chaos() -> None:
        time.sleep(2.0)
        assert victim.proc is not None
        victim.proc.kill()  # SIGKILL: no drain, streams in flight are cut

    tally, _ = run_with([g.url for g in gateways], chaos, retry_connect=True)
    print(f"\nreplica 2 of 2 SIGKILLed after 2 s, clients retry connection errors on the other: {tally.figures()}")
    assert victim.proc is not None and victim.proc.poll() == -signal.SIGKILL
    assert_answered(tally, {"200"}, gateways[:1])
    assert tally.retried > 0  # requests did hit the dead replica and were served by the live one
