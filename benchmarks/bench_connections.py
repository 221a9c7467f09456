"""Many client connections: probe latency, RSS and refusals with 5,000 busy or 19,990 partial-header ones.

Not a test. One gateway process (``python -m gateway serve``) on the built-in ``mock`` provider, with
``server.probe_port`` set. Two phases, each followed by a look at the gateway:

* **busy**: ``--busy`` connections (5,000) each sending chat completions in a loop to a slow upstream
  (``--upstream-ms``, mock latency), so that many requests are in flight at once; a 503 is retried
  after its ``retry-after``, as the SDKs do;
* **partial**: ``--partial`` connections (19,990) that each send half a request head and then nothing,
  as a slowloris client does (``server.header_timeout_s`` closes them; it and ``keepalive_timeout_s`` are raised here so they stay
  open while measured).

Meanwhile ``/healthz`` is asked ``--probes`` times on the main port and on the probe port, each on a
new connection (as a kubelet does), with a 2 s timeout. Printed per phase: probe p50/p99/max and
failures per port, the gateway's RSS growth, connections refused and requests shed by reason (from
``/metrics`` on the probe port), and the lines the gateway logged.

Usage: ``PYTHONPATH=$PWD python benchmarks/bench_connections.py [--busy 5000] [--partial 19990]
[--max-connections 25000] [--upstream-ms 10000]``. Needs a file-descriptor limit above the largest
phase (it raises the soft limit to the hard one, and says so when that is not enough).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import free_port, rss_mib, stop_all, wait_port  # noqa: E402

KEY = "sk-bench"
FD_MARGIN = 64  # descriptors the client needs besides the held connections (probes, logs, the event loop)

POLICY = """\
version: 1
state: {{backend: memory, dlq_path: {tmp}/dlq.jsonl, journal_dir: {tmp}/journal}}
providers:
  mock: {{type: mock, latency_ms: {upstream_ms}}}
models:
  m:
    deployments: [{{provider: mock, model: mock-small}}]
server: {{max_connections: {max_connections}, max_in_flight: {max_in_flight}, header_timeout_s: 600, keepalive_timeout_s: 600,
         probe_port: {probe_port}}}
logging: {{access_log: "off", audit_path: {tmp}/audit.jsonl}}
tenants:
  t:
    api_keys: [{key}]
    models: "*"
    rate_limit: {{concurrency: 100000}}
"""
BODY = b'{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":8}'
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode()
           + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
PARTIAL = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # never finished


def raise_fd_limit(needed: int) -> str | None:
    """Raise the soft RLIMIT_NOFILE to the hard one; a reason to skip when it stays below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        return f"needs {needed} file descriptors, the limit is {soft} (raise it with ulimit -n)"
    return None


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers


async def busy_client(port: int, stop: asyncio.Event, counts: Counter[str]) -> None:
    """One keep-alive connection sending requests until ``stop``; reconnects if closed."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            counts[f"connect {type(exc).__name__}"] += 1
            await asyncio.sleep(1.0)
            continue
        try:
            while not stop.is_set():
                writer.write(REQUEST)
                status, headers = await read_answer(reader)
                counts[str(status)] += 1
                if status in (429, 503):
                    await asyncio.sleep(float(headers.get("retry-after", "1")))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            counts[f"closed {type(exc).__name__}"] += 1
        finally:
            writer.close()


async def probe(port: int, timeout: float = 2.0) -> float | None:
    """Seconds for ``GET /healthz`` on a new connection; None when it failed or timed out."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            status, _ = await read_answer(reader)
            writer.close()
            return time.monotonic() - start if status == 200 else None
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
        return None


async def probe_both(main: int, probes_port: int, n: int, every: float) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {"main": [], "probe": []}
    for _ in range(n):
        out["main"].append(await probe(main))
        out["probe"].append(await probe(probes_port))
        await asyncio.sleep(every)
    return out


def summary(name: str, samples: list[float | None]) -> str:
    ok = sorted(s * 1000 for s in samples if s is not None)
    failed = len(samples) - len(ok)
    if not ok:
        return f"{name}: all {failed} failed"
    p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))]
    return (f"{name}: p50 {statistics.median(ok):.1f} ms, p99 {p99:.1f} ms, max {ok[-1]:.1f} ms, "
            f"{failed}/{len(samples)} failed")


def scrape(probe_port: int) -> dict[str, float]:
    """Refusal and shed counters from the probe port's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{probe_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    wanted = ("llm_gateway_client_connections_refused_total{", "llm_gateway_requests_shed_total{")
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(wanted)}


def changed(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {k.split("_total", 1)[0].removeprefix("llm_gateway_") + k.split("_total", 1)[1]: int(v - before.get(k, 0))
            for k, v in after.items() if v != before.get(k, 0)}


def new_log_lines(log: Path, seen: int) -> tuple[int, list[str]]:
    lines = log.read_text(errors="replace").splitlines()
    return len(lines), lines[seen:]


def print_log(lines: list[str]) -> None:
    kinds = Counter(line.split(": ", 1)[-1][:100] for line in lines)
    print(f"  gateway logged {len(lines)} lines" + ("" if not lines else ":"))
    for text, n in kinds.most_common(6):
        print(f"    {n} x {text}")


async def busy_phase(port: int, probe_port: int, pid: int, n: int, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    counts: Counter[str] = Counter()
    rss0 = rss_mib(pid)
    clients = []
    for i in range(n):
        clients.append(asyncio.create_task(busy_client(port, stop, counts)))
        if i % 250 == 249:
            await asyncio.sleep(0.05)  # a ramp, not a SYN flood
    await asyncio.sleep(args.settle_s)
    probes = await probe_both(port, probe_port, args.probes, 0.1)
    rss1 = rss_mib(pid)
    stop.set()
    await asyncio.sleep(0.5)
    for task in clients:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    print(f"busy: {n} connections sending requests (upstream {args.upstream_ms} ms); answers {dict(counts)}")
    print(f"  RSS {rss0:.1f} -> {rss1:.1f} MiB (+{rss1 - rss0:.1f} MiB, {(rss1 - rss0) * 1024 / n:.1f} KiB a connection)")
    print("  " + summary("/healthz main port", probes["main"]))
    print("  " + summary("/healthz probe port", probes["probe"]))


async def hold_partial(port: int, n: int) -> None:
    """Holder mode (a child process, so the held sockets don't count against the prober's own descriptor
    limit): open ``n`` connections, send half a head on each, report, hold them until stdin closes, then
    report how many the gateway had closed meanwhile."""
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed: Counter[str] = Counter()

    async def open_one() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(PARTIAL)
            held.append((reader, writer))
        except OSError as exc:
            failed[type(exc).__name__] += 1

    for start in range(0, n, 500):
        await asyncio.gather(*(open_one() for _ in range(min(500, n - start))))
    print(f"held {len(held)} failed {dict(failed)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    closed = sum(1 for reader, _ in held if reader.at_eof())
    print(f"closed_by_gateway {closed}", flush=True)
    for _, writer in held:
        writer.close()


async def partial_phase(port: int, probe_port: int, pid: int, n: int, args: argparse.Namespace) -> None:
    rss0 = rss_mib(pid)
    holders = []
    for share in (n // 2, n - n // 2):
        holders.append(subprocess.Popen([sys.executable, __file__, "--hold", str(share), "--port", str(port)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    loop = asyncio.get_running_loop()
    opened = [await loop.run_in_executor(None, h.stdout.readline) for h in holders]
    await asyncio.sleep(args.settle_s)
    probes = await probe_both(port, probe_port, args.probes, 0.1)
    rss1 = rss_mib(pid)
    closed = []
    for h in holders:
        out, _ = await loop.run_in_executor(None, h.communicate, "")
        closed.append(out.strip())
    print(f"partial: {n} connections each sent half a request head, from 2 processes: "
          f"{[o.strip() for o in opened]}; when probing ended: {closed}")
    print(f"  RSS {rss0:.1f} -> {rss1:.1f} MiB (+{rss1 - rss0:.1f} MiB)")
    print("  " + summary("/healthz main port", probes["main"]))
    print("  " + summary("/healthz probe port", probes["probe"]))
    await asyncio.sleep(1.0)


def run_phase(name: str, coro_fn, port: int, probe_port: int, pid: int, n: int, args: argparse.Namespace,
              log: Path, seen: int) -> int:
    before = scrape(probe_port)
    asyncio.run(coro_fn(port, probe_port, pid, n, args))
    print(f"  refused / shed: {changed(before, scrape(probe_port)) or 'none'}")
    seen, lines = new_log_lines(log, seen)
    print_log(lines)
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=5000)
    parser.add_argument("--partial", type=int, default=19990)
    parser.add_argument("--max-connections", type=int, default=25000, help="the gateway's server.max_connections")
    parser.add_argument("--max-in-flight", type=int, default=8192, help="the gateway's server.max_in_flight")
    parser.add_argument("--upstream-ms", type=int, default=10000, help="mock upstream latency")
    parser.add_argument("--probes", type=int, default=50, help="probes per port per phase")
    parser.add_argument("--settle-s", type=float, default=5.0, help="wait after connecting before probing")
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)  # holder mode (a child of the partial phase)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold is not None:
        raise_fd_limit(args.hold + FD_MARGIN)
        asyncio.run(hold_partial(args.port, args.hold))
        return 0
    reason = raise_fd_limit(max(args.busy, args.partial // 2) + FD_MARGIN)
    if reason:
        print(f"skipped: {reason}")
        return 2
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="gw-conns-") as tmp:
        port, probe_port = free_port(), free_port()
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY.format(tmp=tmp, upstream_ms=args.upstream_ms, max_connections=args.max_connections,
                                        max_in_flight=args.max_in_flight, probe_port=probe_port, key=KEY))
        log = Path(tmp) / "gateway.log"
        with log.open("wb") as out:  # the gateway inherits the raised descriptor limit
            gw = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port",
                                   str(port), "--quiet"], stdout=out, stderr=out)
        try:
            wait_port(port)
            wait_port(probe_port)
            print(f"gateway pid {gw.pid}: max_connections {args.max_connections}, max_in_flight {args.max_in_flight}, "
                  f"fd limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, RSS {rss_mib(gw.pid):.1f} MiB")
            seen, _ = new_log_lines(log, 0)
            base = asyncio.run(probe_both(port, probe_port, args.probes, 0.02))
            print("idle:\n  " + summary("/healthz main port", base["main"]) + "\n  "
                  + summary("/healthz probe port", base["probe"]))
            if args.busy:
                seen = run_phase("busy", busy_phase, port, probe_port, gw.pid, args.busy, args, log, seen)
            if args.partial:
                seen = run_phase("partial", partial_phase, port, probe_port, gw.pid, args.partial, args, log, seen)
            print(f"gateway alive at the end: {gw.poll() is None}, RSS {rss_mib(gw.pid):.1f} MiB")
            return 0
        finally:
            stop_all([gw])


if __name__ == "__main__":
    sys.exit(main())
