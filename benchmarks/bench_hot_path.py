"""Gateway CPU per request on the full-policy hot path, measured on the gateway's own thread.

Steadier than whole-process figures on a busy machine: the gateway runs in a thread of its own
(its event loop, uvloop), the mock upstream in another process, and the client (aiohttp, 16
concurrent callers) in the main thread; the figure is the gateway thread's CPU time
(``time.thread_time``) over the requests. The policy is ``python -m benchmarks run full-memory``'s (auth, input checks,
rpm/tpm/concurrency limits, budget, routing, metrics; cache off; memory backend); ``--hits`` turns the
cache on and measures cache hits; ``--floor`` takes the limits and the budget away (``floor``).

Compare two trees by running this script under each, alternated (each ``--tree`` is measured in
child processes that import the gateway, and the runner's policy, from it)::

    python benchmarks/bench_hot_path.py --tree /tmp/before --tree . --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("BENCH_TREE") or str(ROOT))  # the tree under test (a child's)
from benchmarks.common import free_port, spawn_mock, stop_all, wait_port  # noqa: E402
from benchmarks.runner.policies import gateway_policy  # noqa: E402
from benchmarks.runner.scenarios import AUTH as HEADERS  # noqa: E402
from benchmarks.runner.scenarios import CACHEABLE, CHAT  # noqa: E402


async def _drive(url: str, requests: int, callers: int) -> None:
    import aiohttp

    data = (CACHEABLE if HITS else CHAT).encode()
    headers = {**HEADERS, "content-type": "application/json"}
    left = requests
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=callers)) as session:

        async def caller() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, data=data, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        await asyncio.gather(*(caller() for _ in range(callers)))


def measure(upstream_port: int, requests: int, callers: int) -> tuple[float, float]:
    """Gateway-thread CPU microseconds per request (after a warm-up of ``requests // 5``), and the
    Python function calls the gateway thread makes per request (``cProfile``, 500 more requests): a
    count, immune to how busy the machine is."""
    import uvloop

    from gateway.http.runner import start_site
    from gateway.http.server import create_app
    from gateway.policy.loader import load_policy_text

    policy = load_policy_text(gateway_policy(upstream_port, cache=HITS, limits=LIMITS), "bench.yaml", env={})
    loop = uvloop.new_event_loop()
    ready = threading.Event()
    box: dict = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            app = create_app(policy)
            box["runner"] = await start_site(app, "127.0.0.1", 0)
            box["port"] = box["runner"].addresses[0][1]
            ready.set()

        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(30)
    url = f"http://127.0.0.1:{box['port']}/v1/chat/completions"

    def cpu() -> float:
        return asyncio.run_coroutine_threadsafe(_thread_time(), loop).result(10)

    client = uvloop.new_event_loop()
    client.run_until_complete(_drive(url, requests // 5, callers))
    before = cpu()
    client.run_until_complete(_drive(url, requests, callers))
    spent = cpu() - before
    profiler = cProfile.Profile()
    asyncio.run_coroutine_threadsafe(_call(profiler.enable), loop).result(10)
    client.run_until_complete(_drive(url, CALLS_SAMPLE, callers))
    asyncio.run_coroutine_threadsafe(_call(profiler.disable), loop).result(10)
    calls = pstats.Stats(profiler).total_calls  # type: ignore[attr-defined]
    if os.environ.get("BENCH_PSTATS"):  # where the call counts go, for a closer look
        profiler.dump_stats(os.environ["BENCH_PSTATS"])
    asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(30)
    return spent / requests * 1e6, calls / CALLS_SAMPLE


CALLS_SAMPLE = 500
HITS = False  # ``--hits``: the cache-hit path instead of the miss path
LIMITS = True  # ``--floor``: a tenant without rate limits or budget (the ``floor`` scenario's policy)


async def _thread_time() -> float:
    return time.thread_time()


async def _call(fn: object) -> None:
    fn()  # type: ignore[operator]  # on the gateway's thread: cProfile profiles the thread that enables it


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="a source tree to measure (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--hits", action="store_true", help="cache on, every request a hit (warmed by the warm-up)")
    ap.add_argument("--floor", action="store_true", help="a tenant without rate limits or budget")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global HITS, LIMITS
    HITS, LIMITS = args.hits, not args.floor
    if args.child:
        print(*measure(args.child, args.requests, args.callers))
        return 0
    trees = args.tree or [str(ROOT)]
    up = free_port()
    mock = spawn_mock(up)
    from benchmarks.common import alternate_trees  # the parent's own tree (a child's may be older)

    child = [str(up), "--requests", str(args.requests), "--callers", str(args.callers),
             *(["--hits"] if args.hits else []), *(["--floor"] if args.floor else [])]
    try:
        wait_port(up)
        runs = alternate_trees(__file__, trees, args.rounds, child)
    finally:
        stop_all([mock])
    if runs is None:
        return 1
    print(f"{'tree':<36} {'gateway-thread CPU us/request per round':<48} {'median':>6} {'min':>6} {'calls/req':>9}")
    for tree, rounds in runs.items():
        values = [float(r[0]) for r in rounds]
        cells = " ".join(f"{v:5.0f}" for v in values)
        print(f"{tree:<36} {cells:<48} {statistics.median(values):>6.0f} {min(values):>6.0f} "
              f"{statistics.median(float(r[1]) for r in rounds):>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
