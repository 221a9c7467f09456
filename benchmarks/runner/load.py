"""Load generators: wrk (closed loop, or paced per connection) and the streaming clients, pinned to the load CPUs.

wrk's Lua ``done`` hook prints one ``BENCH`` line (requests, duration, p50/p99/p99.9 in microseconds,
socket and status errors), so p99.9 and the error counts come straight from wrk's own histogram.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.runner.procs import pinned

DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True, slots=True)
class Load:
    """What one load run measured; latencies in ms."""

    requests: int
    seconds: float
    p50: float
    p99: float
    p999: float
    errors: int  # non-2xx answers + socket errors (connect, read, write, timeout)
    note: str = ""
    timed: bool = True  # False: no latency or rate figures (held streams)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_script(body: str, headers: dict[str, str], delay_ms: float | None = None) -> str:
    """A Lua script POSTing the JSON ``body`` (no single quotes); ``delay_ms``: each connection's pause."""
    lines = ['wrk.method = "POST"', f"wrk.body = '{body}'", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    if delay_ms is not None:
        lines.append(f"delay = function() return {delay_ms:.3f} end")
    return "\n".join(lines) + "\n" + DONE


def run_wrk(url: str, script: Path, duration: float, connections: int, cpus: str | None) -> Load:
    threads = max(1, min(2, connections))
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
            "-s", str(script), url]
    out = subprocess.run(pinned(args, cpus), capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-400:]}")
    requests, micros, p50, p99, p999, socket_errors, status_errors = (int(x) for x in line.split()[1:])
    return Load(requests, micros / 1e6, p50 / 1000, p99 / 1000, p999 / 1000, socket_errors + status_errors)


def run_client(args: list[str], cpus: str | None, timeout: float) -> dict:
    """``python -m benchmarks.runner.streams ...`` on the load CPUs; its last stdout line is a JSON object."""
    cmd = pinned([sys.executable, "-m", "benchmarks.runner.streams", *args], cpus)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"stream client failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    return json.loads(lines[-1])
