"""The per-stream read watchdog (``providers/watchdog.py``) and the two stream readers built on it.

Unit scenarios run on both loops (asyncio's and uvloop) with real time and bounds of tens of ms; the
reader reads an ``asyncio.Queue`` the way ``timed_sse`` reads its upstream. The readers themselves
(``timed_sse``, ``timed_frames``) read real aiohttp responses from a loopback server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from gateway.errors import UpstreamError
from gateway.providers.bedrock_stream import timed_frames
from gateway.providers.openai import timed_sse
from gateway.providers.watchdog import Watchdog
from tests.support.aws_wire import event_frame

IDLE = 0.04
RUNNERS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    return RUNNERS[request.param]


async def reader(source: asyncio.Queue, dog: Watchdog, got: list[Any], pause_s: float = 0.0) -> None:
    """Reads ``source`` until ``None`` under ``dog``; a stall raises ``TimeoutError``."""
    try:
        while True:
            dog.enter()
            try:
                item = await source.get()
            except asyncio.CancelledError:
                if dog.expired():
                    raise TimeoutError from None
                raise
            dog.since = 0.0
            if item is None:
                return
            got.append(item)
            if pause_s:
                await asyncio.sleep(pause_s)  # the consumer's time: not a read
    finally:
        dog.close()


async def feed(source: asyncio.Queue, count: int, every_s: float) -> None:
    for i in range(count):
        await asyncio.sleep(every_s)
        source.put_nowait(i)
    source.put_nowait(None)


def test_a_silent_source_is_cut_and_the_task_is_not_left_cancelling(run) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        source: asyncio.Queue = asyncio.Queue()
        source.put_nowait("first")
        got: list[Any] = []
        with pytest.raises(TimeoutError):
            await reader(source, Watchdog(IDLE, loop.time() + 60), got)
        assert got == ["first"]
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0.001)  # the task goes on normally: no cancellation left pending

    run(scenario())


def test_events_faster_than_the_bound_are_never_cut_over_many_bounds(run) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        source: asyncio.Queue = asyncio.Queue()
        got: list[Any] = []
        # 100 events over ~10 bounds, each a tenth of a bound after the last: a busy host's pause of
        # most of a bound still cuts nothing unless a bound is mismeasured
        feeder = asyncio.create_task(feed(source, 100, 0.01))
        await reader(source, Watchdog(0.1, loop.time() + 60), got)
        await feeder
        assert got == list(range(100))

    run(scenario())


def test_time_spent_by_the_consumer_between_reads_does_not_count(run) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        source: asyncio.Queue = asyncio.Queue()
        for i in range(4):
            source.put_nowait(i)
        source.put_nowait(None)
        got: list[Any] = []
        await reader(source, Watchdog(IDLE, loop.time() + 60), got, pause_s=IDLE * 3)
        assert got == [0, 1, 2, 3]

    run(scenario())


def test_the_total_deadline_cuts_a_stream_that_keeps_flowing(run) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        source: asyncio.Queue = asyncio.Queue()
        got: list[Any] = []
        feeder = asyncio.create_task(feed(source, 1000, IDLE / 4))
        try:
            with pytest.raises(TimeoutError):
                await reader(source, Watchdog(10.0, loop.time() + IDLE * 3), got)
        finally:
            feeder.cancel()
        assert 0 < len(got) < 1000

    run(scenario())


def test_an_outside_cancel_during_a_read_stays_a_cancellation(run) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        source: asyncio.Queue = asyncio.Queue()
        got: list[Any] = []
        task = asyncio.create_task(reader(source, Watchdog(IDLE * 5, loop.time() + 60), got))
        await asyncio.sleep(IDLE)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled() and task.cancelling() == 1

    run(scenario())


@pytest.mark.parametrize("outside_first", [True, False])
def test_a_stall_racing_an_outside_cancel_ends_cancelled(run, outside_first: bool) -> None:
    """The loop is blocked past both the watchdog's bound and an outside cancel's time, so both run in
    the same iteration, before the reading task resumes (in either order)."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        source: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(reader(source, Watchdog(IDLE, loop.time() + 60), []))
        await asyncio.sleep(0)  # the read is in progress; the watchdog is due at +IDLE
        loop.call_later(IDLE / 2, time.sleep, IDLE * 2)  # blocks the loop over both
        loop.call_later(IDLE * (0.75 if outside_first else 1.25), task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    run(scenario())


def test_reads_moved_to_another_task_are_cut_in_that_task(run) -> None:
    """The first event read in one task (a stream primed before answering), the rest in another."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        source: asyncio.Queue = asyncio.Queue()
        source.put_nowait("first")
        dog = Watchdog(IDLE, loop.time() + 60)
        dog.enter()
        assert await source.get() == "first"
        dog.since = 0.0
        second = asyncio.create_task(reader(source, dog, []))
        await asyncio.wait([second], timeout=IDLE * 25)  # a cancel of this task would end the wait here
        assert second.done() and isinstance(second.exception(), TimeoutError)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0

    run(scenario())


# --- the readers on real responses ---------------------------------------------------------------------
async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)  # the silent handlers are ended, not waited for
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/"


def chunks_then_silence(chunks: list[bytes], every_s: float, end: bool) -> Callable:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)
            await asyncio.sleep(every_s)
        if end:
            await resp.write_eof()
            return resp
        await asyncio.sleep(30)  # silent, connection open
        return resp

    return handler


async def read_all(url: str, reader_of: Callable[[aiohttp.ClientResponse], AsyncIterator[Any]],
                   pause_s: float = 0.0) -> list[Any]:
    got: list[Any] = []
    async with aiohttp.ClientSession() as session:
        resp = await session.get(url)
        async for item in reader_of(resp):
            got.append(item)
            await asyncio.sleep(pause_s)
        assert resp.closed or resp.connection is None  # released or closed at the end
    return got


async def test_timed_sse_cuts_a_silent_upstream_as_a_stall() -> None:
    runner, url = await serve(chunks_then_silence([b"data: one\n\n"], 0, end=False))
    deadline = asyncio.get_running_loop().time() + 60
    got: list[Any] = []
    try:
        with pytest.raises(UpstreamError) as info:
            async with aiohttp.ClientSession() as session:
                resp = await session.get(url)
                async for item in timed_sse(resp, "up", IDLE, deadline):
                    got.append(item)
        assert info.value.kind == "timeout"
        assert info.value.message == f"up stream stalled: nothing for {IDLE:g}s (timeouts.first_byte_s)"
        assert got == [(None, b"one")]
    finally:
        await runner.cleanup()


async def test_timed_sse_does_not_count_a_slow_consumer_as_a_stall() -> None:
    events = [f"data: {i}\n\n".encode() for i in range(4)]
    runner, url = await serve(chunks_then_silence(events, 0, end=True))
    deadline = asyncio.get_running_loop().time() + 60
    try:
        got = await read_all(url, lambda resp: timed_sse(resp, "up", IDLE, deadline), pause_s=IDLE * 3)
        assert [data for _, data in got] == [b"0", b"1", b"2", b"3"]
    finally:
        await runner.cleanup()


async def test_timed_frames_cuts_a_silent_upstream_and_says_which_bound() -> None:
    frame = event_frame("messageStart", {"role": "assistant"})
    runner, url = await serve(chunks_then_silence([frame], 0, end=False))
    loop = asyncio.get_running_loop()
    try:
        for idle_s, total_s, message in ((IDLE, 60.0, f"up stream stalled: nothing for {IDLE:g}s"),
                                         (60.0, IDLE * 2, "up stream cut: the answer exceeded timeouts.total_s")):
            got: list[Any] = []
            with pytest.raises(UpstreamError) as info:
                async with aiohttp.ClientSession() as session:
                    resp = await session.get(url)
                    async for item in timed_frames(resp, "up", idle_s, loop.time() + total_s):
                        got.append(item)
            assert info.value.kind == "timeout" and info.value.message.startswith(message)
            assert len(got) == 1 and got[0][0][":event-type"] == "messageStart"
    finally:
        await runner.cleanup()


async def test_timed_frames_reads_a_whole_stream_slower_than_the_bound_overall() -> None:
    frames = [event_frame("contentBlockDelta", {"delta": {"text": str(i)}}) for i in range(8)]
    runner, url = await serve(chunks_then_silence(frames, IDLE / 4, end=True))  # 8 frames over ~1 bound...
    deadline = asyncio.get_running_loop().time() + 60
    try:
        got = await read_all(url, lambda resp: timed_frames(resp, "up", IDLE, deadline), pause_s=IDLE / 2)
        assert len(got) == 8  # ...read over ~3 bounds with the consumer's pauses
    finally:
        await runner.cleanup()
