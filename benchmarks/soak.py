"""Soak: minutes of mixed traffic through one gateway process with 5% injected upstream faults.

Not a test. A gateway subprocess on the built-in ``mock`` provider (``failure_rate: 0.05``, one
deployment and no retries, so each injected 503 reaches the client) serves ``--connections``
concurrent SDK clients sending, in turn, a chat completion, a chat stream (``openai``), an Anthropic
Messages request (``anthropic``) and a Responses request (``openai``), with rate limits, a budget and
metrics on. Every ``--every`` seconds it prints the gateway's RSS and the counts so far; at the end,
answers by kind, latency, RSS over the run, and lost requests (sent without any answer: must be 0).

Usage: ``PYTHONPATH=$PWD python benchmarks/soak.py [--minutes 10] [--connections 16] [--redis]``
(``--redis``: state in a private ``redis-server``; ``--store``: Responses stored, as by default in the API;
``--dlq-max``: the dead-letter queue's bound, whose ~4 KB records are the one per-request table left
growing once the others are full).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import free_port, missing_tool, rss_mib, start_redis, stop_all, wait_port  # noqa: E402

KEY = "sk-soak"
FAILURE_RATE = 0.05
KINDS = ("chat", "stream", "messages", "responses")

POLICY = """\
version: 1
state:
  {state}
  dlq_path: {tmp}/dlq.jsonl
  dlq_max: {dlq_max}
  journal_dir: {tmp}/journal
providers:
  mock:
    type: mock
    latency_ms: 5
    stream_chunk_ms: 1
    failure_rate: {failure_rate}
models:
  soak:
    context_window: 8000
    price: {{input: 0.15, output: 0.60}}
    deployments:
      - {{provider: mock, model: mock-small}}
retry: {{attempts: 1, backoff_ms: 0}}
circuit_breaker: {{failures: 50, cooldown_s: 1}}
logging: {{access_log: "off", audit_path: {tmp}/audit.jsonl}}
tenants:
  soak:
    api_keys: [{key}]
    models: "*"
    rate_limit: {{rpm: 100000000, tpm: 1000000000, concurrency: 1000}}
    budget: {{usd: 1000000, period: daily}}
"""


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # "chat 200", "stream 503 upstream_error", ...
    latencies: list[float] = field(default_factory=list)
    unanswered: Counter[str] = field(default_factory=Counter)  # exception types of requests never answered

    def errors(self) -> dict[str, int]:
        return {k: n for k, n in sorted(self.kinds.items()) if not k.endswith(" 200")}


async def one(kind: str, i: int, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic, store: bool) -> str:
    """Send one request of ``kind``; its answer's label, or raise when there was none."""
    text = f"soak request {i} about the weather"
    try:
        if kind == "chat":
            out = await oai.chat.completions.create(model="soak", messages=[{"role": "user", "content": text}])
            assert out.choices[0].message.content
        elif kind == "stream":
            stream = await oai.chat.completions.create(model="soak", stream=True,
                                                       messages=[{"role": "user", "content": text}])
            assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        elif kind == "messages":
            msg = await ant.messages.create(model="soak", max_tokens=64, messages=[{"role": "user", "content": text}])
            assert msg.content
        else:
            resp = await oai.responses.create(model="soak", input=text, store=store)
            assert resp.output_text
        return "200"
    except (openai.APIStatusError, anthropic.APIStatusError) as err:
        body = err.body if isinstance(err.body, dict) else {}
        code = (body.get("error") or {}).get("code") or (body.get("error") or {}).get("type") or body.get("code")
        return f"{err.status_code} {code}"
    except (openai.APIConnectionError, anthropic.APIConnectionError):
        raise
    except (openai.APIError, anthropic.APIError) as err:  # an error event inside a stream: an answer
        return f"stream_error {getattr(err, 'code', None) or type(err).__name__}"


async def worker(wid: int, deadline: float, tally: Tally, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic,
                 store: bool) -> None:
    i = 0
    while time.monotonic() < deadline:
        kind = KINDS[(wid + i) % len(KINDS)]
        i += 1
        tally.sent += 1
        t0 = time.monotonic()
        try:
            label = await one(kind, wid * 1_000_000 + i, oai, ant, store)
        except Exception as exc:  # noqa: BLE001 - a request that got no answer: lost
            tally.unanswered[f"{kind} {type(exc).__name__}"] += 1
            continue
        tally.answered += 1
        tally.kinds[f"{kind} {label}"] += 1
        tally.latencies.append(time.monotonic() - t0)


async def monitor(pid: int, start: float, deadline: float, every: float, tally: Tally,
                  rss: list[tuple[float, float]]) -> None:
    last_answered, last_t = 0, start
    while True:
        now = time.monotonic()
        mib = rss_mib(pid)
        rss.append((now - start, mib))
        rate = (tally.answered - last_answered) / max(now - last_t, 1e-9)
        print(f"{now - start:7.0f} s  RSS {mib:6.1f} MiB  answered {tally.answered:8d}  {rate:6.0f} req/s  "
              f"errors {sum(tally.errors().values()):5d}  lost {sum(tally.unanswered.values()):3d}",
              flush=True)
        last_answered, last_t = tally.answered, now
        if now >= deadline:
            return
        await asyncio.sleep(min(every, max(deadline - now, 0.1)))


async def soak(url: str, pid: int, seconds: float, connections: int, every: float, store: bool) -> tuple[Tally, list]:
    oai = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    ant = anthropic.AsyncAnthropic(base_url=url, api_key=KEY, max_retries=0, timeout=30)
    tally, rss = Tally(), []
    start = time.monotonic()
    deadline = start + seconds
    mon = asyncio.create_task(monitor(pid, start, deadline, every, tally, rss))
    await asyncio.gather(*(worker(w, deadline, tally, oai, ant, store) for w in range(connections)))
    await mon
    await oai.close()
    await ant.close()
    return tally, rss


def report(tally: Tally, rss: list[tuple[float, float]], seconds: float) -> int:
    lat = sorted(tally.latencies) or [0.0]
    lost = tally.sent - tally.answered
    by_kind = Counter(k.split()[0] for k in tally.kinds.elements())
    failed = sum(tally.errors().values())
    print(f"\n{tally.sent} requests in {seconds:.0f} s ({tally.answered / seconds:.0f} req/s), by kind {dict(by_kind)}")
    print(f"answers other than 200: {tally.errors()} ({failed / max(tally.answered, 1):.1%} of answers; "
          f"injected failure rate {FAILURE_RATE:.0%})")
    print(f"latency p50 {statistics.median(lat) * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms, "
          f"max {lat[-1] * 1000:.0f} ms")
    mibs = [m for _, m in rss]
    print(f"RSS MiB: start {mibs[0]:.1f}, after 1/4 {mibs[len(mibs) // 4]:.1f}, end {mibs[-1]:.1f}, "
          f"max {max(mibs):.1f}")
    print(f"lost requests (sent, never answered): {lost} {dict(tally.unanswered)}")
    return 0 if lost == 0 else 1


def print_bounds(url: str) -> None:
    """The bounded tables' evictions and dropped log records, from the gateway's /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    wanted = ("llm_gateway_memory_evictions_total", "llm_gateway_log_records_dropped_total")
    print("bounds: " + ", ".join(line for line in text.splitlines() if line.startswith(wanted)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS lines")
    parser.add_argument("--redis", action="store_true", help="state in a private redis-server")
    parser.add_argument("--store", action="store_true", help="store Responses (memory grows for their 24 h TTL)")
    parser.add_argument("--dlq-max", type=int, default=100_000, help="state.dlq_max: the memory backend keeps "
                        "each dead-lettered request (~4 KB) until this many")
    args = parser.parse_args()
    procs = []
    with tempfile.TemporaryDirectory(prefix="gw-soak-") as tmp:
        state = "backend: memory"
        if args.redis:
            if missing_tool("redis-server"):
                print("--redis needs redis-server on PATH")
                return 2
            rport = free_port()
            procs.append(start_redis(rport, Path(tmp), cpu=None))
            wait_port(rport)
            state = f"backend: redis\n  redis_url: redis://127.0.0.1:{rport}/0"
        policy = Path(tmp) / "soak.yaml"
        policy.write_text(POLICY.format(state=state, tmp=tmp, failure_rate=FAILURE_RATE, key=KEY, dlq_max=args.dlq_max))
        port = free_port()
        log = Path(tmp) / "gateway.log"
        with log.open("wb") as out:  # a file, not a pipe: a pipe nobody reads fills and stalls the gateway's logging
            gw = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port",
                                   str(port), "--quiet"], stdout=out, stderr=out)
        procs.append(gw)
        try:
            wait_port(port)
            seconds = args.minutes * 60
            print(f"soak: {args.minutes:g} min, {args.connections} connections, {' / '.join(KINDS)}, "
                  f"{FAILURE_RATE:.0%} upstream 503s, state {'redis' if args.redis else 'memory'}")
            tally, rss = asyncio.run(soak(f"http://127.0.0.1:{port}", gw.pid, seconds, args.connections,
                                          args.every, args.store))
            code = report(tally, rss, seconds)
            print_bounds(f"http://127.0.0.1:{port}")
            lines = log.read_text(errors="replace").splitlines()
            print(f"gateway log: {len(lines)} lines, {sum('Traceback' in x for x in lines)} tracebacks")
            return code
        finally:
            stop_all(procs[::-1])


if __name__ == "__main__":
    sys.exit(main())
