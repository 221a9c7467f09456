"""Streaming clients, run by the runner on the load CPUs: ``python -m benchmarks.runner.streams ttft|idle URL ...``.

``ttft``: streamed chat requests one after another (``--clients`` at once), each timed from the send to
the first SSE ``data:`` line, bounded by ``--count`` and ``--duration``; prints one JSON line.

``idle``: opens ``--streams`` streams the mock holds open after their first chunk (raw sockets, so the
client stays small), prints ``READY`` and a JSON line once all are open (or failed), then holds them until
a line arrives on stdin or ``--hold-s`` passes, and closes them; its last JSON line also says how many were
still held when that line came (``held``: neither closed nor sent anything past their first event, which
a stream the gateway cuts or ends would be). Opening is bounded too
(``--open-within-s``, by default ``open_within_s`` of its streams).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from urllib.parse import urlsplit

import aiohttp
import uvloop

OPEN_WITHIN_S = 120.0  # the idle client gives up opening streams after this...
# ... or after this per stream when longer: 10,000 take ~45 s on a quiet 2-core machine (the gateway, the mock
# and the kernel's loopback on one CPU) and more than 120 s while another load shares it.
OPEN_S_PER_STREAM = 0.025


def open_within_s(streams: int) -> float:
    """How long opening ``streams`` streams (from all clients of a run) may take."""
    return max(OPEN_WITHIN_S, streams * OPEN_S_PER_STREAM)


def _pct(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p / 100))] if sorted_ms else 0.0


async def ttft(url: str, body: bytes, headers: dict[str, str], clients: int, count: int, duration: float) -> dict:
    firsts: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + duration

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors, sent
        while sent < count and time.perf_counter() < deadline:
            sent += 1
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    first = None
                    async for line in resp.content:
                        if first is None and line.startswith(b"data:"):
                            first = time.perf_counter() - start
                    if resp.status != 200 or first is None:
                        errors += 1
                    else:
                        firsts.append(first * 1000)
            except (TimeoutError, aiohttp.ClientError):
                errors += 1

    began = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    firsts.sort()
    return {"requests": len(firsts), "seconds": time.perf_counter() - began, "errors": errors,
            "p50": _pct(firsts, 50), "p99": _pct(firsts, 99), "p999": _pct(firsts, 99.9)}


async def _until_ended(reader: asyncio.StreamReader) -> None:
    """Return when a held stream ends: closed, or anything but chunk framing sent past its first event."""
    with contextlib.suppress(OSError):
        while (part := await reader.read(65536)) and not part.strip():
            pass


async def _open(host: str, port: int, raw: bytes, sem: asyncio.Semaphore,
                held: list[tuple[asyncio.StreamWriter, asyncio.Task]]) -> bool:
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        except (TimeoutError, OSError):
            return False
        try:
            writer.write(raw)
            seen = b""
            while b"\n\n" not in seen.partition(b"data:")[2]:  # the whole first event
                part = await asyncio.wait_for(reader.read(4096), 30)
                if not part:
                    raise ConnectionError("closed before the first chunk")
                seen += part
            if not seen.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(seen[:40].decode(errors="replace"))
        except (TimeoutError, OSError):
            writer.close()
            return False
        held.append((writer, asyncio.create_task(_until_ended(reader))))
        return True


async def idle(url: str, body: bytes, headers: dict[str, str], streams: int, hold_s: float,
               open_s: float) -> dict:
    parts = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Host": parts.netloc,
                                                 "Content-Length": str(len(body))}.items())
    raw = f"POST {parts.path} HTTP/1.1\r\n{head}\r\n".encode() + body
    held: list[tuple[asyncio.StreamWriter, asyncio.Task]] = []  # each with the task that sees it end
    began = time.perf_counter()
    sem = asyncio.Semaphore(256)  # connections being opened at once
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    tasks = [asyncio.create_task(_open(host, port, raw, sem, held)) for _ in range(streams)]
    _, late = await asyncio.wait(tasks, timeout=open_s)
    for task in late:  # bounded in time: what did not open by then counts as failed
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    opened = len(held)
    print("READY", flush=True)
    print(json.dumps({"opened": opened, "failed": streams - opened, "seconds": time.perf_counter() - began}),
          flush=True)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), hold_s)
    still = sum(not watch.done() for _, watch in held)
    for writer, watch in held:
        watch.cancel()
        writer.close()
    return {"opened": opened, "failed": streams - opened, "seconds": time.perf_counter() - began, "held": still}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("ttft", "idle"))
    parser.add_argument("url")
    parser.add_argument("--body", required=True)
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--hold-s", type=float, default=30.0)
    parser.add_argument("--open-within-s", type=float, help="default: open_within_s(--streams)")
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers["Content-Type"] = "application/json"
    body = args.body.encode()
    uvloop.install()
    if args.mode == "ttft":
        result = asyncio.run(ttft(args.url, body, headers, args.clients, args.count, args.duration))
    else:
        open_s = args.open_within_s or open_within_s(args.streams)
        result = asyncio.run(idle(args.url, body, headers, args.streams, args.hold_s, open_s))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
