"""Redis calls per request: the gateway's own count of state calls, and what Redis saw, around one load run."""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

import redis

from benchmarks.runner.procs import group_cpu_s

STATE_COUNT = re.compile(r'^llm_gateway_state_duration_seconds_count\{op="([^"]+)"\} ([0-9.e+]+)$', re.M)
SCRIPT_COMMANDS = ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_eval_ro", "cmdstat_evalsha_ro", "cmdstat_fcall",
                   "cmdstat_fcall_ro")


def state_calls(port: int) -> dict[str, float]:
    """The gateway's count of state calls by op (``llm_gateway_state_duration_seconds``), from its /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {op: float(n) for op, n in STATE_COUNT.findall(text)}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counters at one moment; the difference of two, per request, gives the figures."""

    gateway: dict[str, float]  # state calls by op, from the gateway's /metrics
    commands: int  # every command Redis ran, those inside scripts included (INFO commandstats)
    scripts: int  # EVAL/EVALSHA/FCALL calls (INFO commandstats)
    reads: int  # network reads Redis processed: round trips on the wire, pipelines merged (INFO stats)
    cpu_s: float  # redis-server's CPU time

    @classmethod
    def take(cls, client: redis.Redis, gateway_port: int, redis_pid: int) -> Snapshot:
        stats = client.info("commandstats")
        counted = {k: v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_ping")}
        return cls(state_calls(gateway_port), sum(counted.values()),
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
        """Calls per request: the gateway's count when it exports one, else the script calls Redis saw."""
        after = Snapshot.take(self.client, self.gateway_port, self.redis_pid)
        self.client.close()
        before = self.before or after
        n = max(requests, 1)
        ops = {op: (count - before.gateway.get(op, 0)) / n for op, count in sorted(after.gateway.items())}
        ops = {op: per for op, per in ops.items() if per >= 0.005}
        calls = sum(ops.values()) if ops else (after.scripts - before.scripts) / n
        source = ("gateway: " + ", ".join(f"{op} {per:.2f}" for op, per in ops.items())) if ops else "script calls"
        return calls, (f"Redis {calls:.2f} calls/req ({source}); {(after.reads - before.reads) / n:.2f} reads/req "
                       f"on the wire; {(after.commands - before.commands) / n:.1f} commands/req incl. inside "
                       f"scripts; redis-server {(after.cpu_s - before.cpu_s) / n * 1e6:.0f} us CPU/req")
