"""CPU per stream event of the read bound: an ``asyncio.timeout`` per read vs one ``Watchdog`` per stream.

200k events from an in-memory async generator (``--every N``: a loop pass every N events, as network
reads have; 0: never), read bare, under a per-read timeout (the old ``timed_sse``), and under the
watchdog (the current one); medians of 5 rounds of ``time.process_time``, on asyncio's loop and uvloop::

    PYTHONPATH=$PWD python benchmarks/bench_watchdog.py --every 8
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import uvloop

from gateway.providers.watchdog import Watchdog

IDLE_S = 30.0


async def source(n: int, every: int) -> AsyncIterator[int]:
    for i in range(n):
        if every and i % every == 0:
            await asyncio.sleep(0)
        yield i


async def bare(it: AsyncIterator[int]) -> None:
    while True:
        try:
            await it.__anext__()
        except StopAsyncIteration:
            return


async def per_read(it: AsyncIterator[int]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 600
    while True:
        try:
            async with asyncio.timeout(max(0.001, min(IDLE_S, deadline - loop.time()))):
                await it.__anext__()
        except StopAsyncIteration:
            return


async def watchdog(it: AsyncIterator[int]) -> None:
    dog = Watchdog(IDLE_S, asyncio.get_running_loop().time() + 600)
    try:
        while True:
            dog.enter()
            try:
                await it.__anext__()
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if dog.expired():
                    raise TimeoutError from None
                raise
            dog.since = 0.0
    finally:
        dog.close()


async def measure(events: int, every: int) -> dict[str, float]:
    """Median microseconds of CPU per event for each reader."""
    runs: dict[str, list[float]] = {}
    for _ in range(5):
        for read in (bare, per_read, watchdog):
            started = time.process_time()
            await read(source(events, every).__aiter__())
            runs.setdefault(read.__name__, []).append((time.process_time() - started) / events * 1e6)
    return {name: sorted(v)[len(v) // 2] for name, v in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=0)
    args = parser.parse_args()
    runners: dict[str, Callable[[Coroutine[Any, Any, dict[str, float]]], dict[str, float]]] = {
        "asyncio": asyncio.run, "uvloop": uvloop.run}
    for loop_name, run in runners.items():
        figures = run(measure(args.events, args.every))
        for name, us in figures.items():
            print(f"{loop_name:8s} {name:9s} {us:6.2f} us/event  (+{us - figures['bare']:.2f} over bare)")


if __name__ == "__main__":
    main()
