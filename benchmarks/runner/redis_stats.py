"""Redis calls per request: the gateway's own count of state calls, and what Redis saw, around one load run."""

from __future__ import annotations

import re
import time
import urllib.request
from dataclasses import dataclass

import redis

from benchmarks.runner.procs import group_cpu_s

STATE_COUNT = re.compile(r'^llm_gateway_state_duration_seconds_count\{op="([^"]+)"\} ([0-9.e+]+)$', re.M)
REQUEST_COUNT = re.compile(r'^llm_gateway_requests_total\{[^}]*\} ([0-9.e+]+)$', re.M)
IN_FLIGHT = re.compile(r'^llm_gateway_requests_in_flight ([0-9.e+]+)$', re.M)
QUIET_WAIT_S = 5.0  # at most this long for the requests a load left in flight to complete
SCRIPT_COMMANDS = ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_eval_ro", "cmdstat_evalsha_ro", "cmdstat_fcall",
                   "cmdstat_fcall_ro")


def _metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def state_calls(port: int) -> tuple[dict[str, float], float]:
    """The gateway's count of state calls by op (``llm_gateway_state_duration_seconds``) and of the
    requests it completed (``llm_gateway_requests_total``), from its /metrics."""
    text = _metrics(port)
    return {op: float(n) for op, n in STATE_COUNT.findall(text)}, sum(float(n) for n in REQUEST_COUNT.findall(text))


def wait_quiet(port: int, within_s: float = QUIET_WAIT_S) -> None:
    """Until the requests a load's connections left in flight have completed: none in flight, and
    neither the requests counted nor the fused calls moved since the last look (a request leaves
    the in-flight gauge in its first ``complete``, before its state call and its count)."""
    deadline = time.monotonic() + within_s
    last: tuple[str, ...] | None = None
    while time.monotonic() < deadline:
        text = _metrics(port)
        if not text:
            return
        now = (*IN_FLIGHT.findall(text), *REQUEST_COUNT.findall(text),
               *(n for op, n in STATE_COUNT.findall(text) if op == "fused"))
        if now == last and all(float(n) <= 0 for n in IN_FLIGHT.findall(text)):
            return
        last = now
        time.sleep(0.05)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counters at one moment; the difference of two, per request, gives the figures."""

    gateway: dict[str, float]  # state calls by op, from the gateway's /metrics
    requests: float  # requests the gateway completed, from the same scrape
    commands: int  # every command Redis ran, those inside scripts included (INFO commandstats)
    scripts: int  # EVAL/EVALSHA/FCALL calls (INFO commandstats)
    reads: int  # network reads Redis processed: round trips on the wire, pipelines merged (INFO stats)
    cpu_s: float  # redis-server's CPU time

    @classmethod
    def take(cls, client: redis.Redis, gateway_port: int, redis_pid: int) -> Snapshot:
        stats = client.info("commandstats")
        counted = {k: v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_ping")}
        return cls(*state_calls(gateway_port), sum(counted.values()),
                   sum(counted.get(k, 0) for k in SCRIPT_COMMANDS),
                   int(client.info("stats").get("total_reads_processed", 0)), group_cpu_s(redis_pid))


class RedisWatch:
    """``start`` before a load run, ``finish`` after it: (calls per request, a note for the table)."""

    def __init__(self, url: str, redis_pid: int, gateway_port: int) -> None:
        self.client = redis.Redis.from_url(url)
        self.redis_pid = redis_pid
        self.gateway_port = gateway_port
        self.before: Snapshot | None = None

    def start(self) -> None:
        self.before = Snapshot.take(self.client, self.gateway_port, self.redis_pid)

    def finish(self, requests: int) -> tuple[float, str]:
        """Calls per request: the gateway's count when it exports one, else the script calls Redis saw.

        Per request the gateway completed, when it counts them, once none is in flight: wrk counts
        only the answers it read before its time ran out, while the requests its connections left in
        flight at the end (one per connection) made their calls too (~2 x 32 calls more on a few
        thousand requests: +0.02 per request).
        """
        wait_quiet(self.gateway_port)
        after = Snapshot.take(self.client, self.gateway_port, self.redis_pid)
        self.client.close()
        before = self.before or after
        completed = after.requests - before.requests
        n = max(completed if completed > 0 else requests, 1)
        ops = {op: (count - before.gateway.get(op, 0)) / n for op, count in sorted(after.gateway.items())}
        ops = {op: per for op, per in ops.items() if per >= 0.005}
        calls = sum(ops.values()) if ops else (after.scripts - before.scripts) / n
        source = ("gateway: " + ", ".join(f"{op} {per:.2f}" for op, per in ops.items())) if ops else "script calls"
        counted = f"per {completed:.0f} requests completed (wrk read {requests})" if completed > 0 else "per request"
        return calls, (f"Redis {calls:.2f} calls/req ({source}; {counted}); {(after.reads - before.reads) / n:.2f} reads/req "
                       f"on the wire; {(after.commands - before.commands) / n:.1f} commands/req incl. inside "
                       f"scripts; redis-server {(after.cpu_s - before.cpu_s) / n * 1e6:.0f} us CPU/req")
