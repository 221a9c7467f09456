"""The attempt's one deadline while a new upstream connection is opened (``PoolTimer.connecting``).

The attempt's timeout opens without a deadline (a free pooled connection then sets it once); a
connection that has to be opened, and never opens, must still be cut at ``connect_s + first_byte_s``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.errors import UpstreamError
from gateway.policy.model import ProviderSpec, Timeouts
from gateway.providers.base import UpstreamRequest
from gateway.providers.openai import OpenAIProvider


async def test_a_connection_that_never_opens_is_cut_at_connect_plus_first_byte(monkeypatch) -> None:
    async def never(_self: Any, _req: Any, _traces: Any, _timeout: Any) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(aiohttp.TCPConnector, "_create_connection", never)
    spec = ProviderSpec(name="slow", type="openai", base_url="http://127.0.0.1:9/v1",
                        timeouts=Timeouts(connect_s=0.05, first_byte_s=0.05, total_s=5.0))
    provider = OpenAIProvider(spec)
    req = UpstreamRequest(endpoint="chat", body={"model": "m", "messages": []}, stream=False, request_id="r-1")
    try:
        with pytest.raises(UpstreamError) as info:
            await asyncio.wait_for(provider.send(req), 10)  # only so a missing deadline fails instead of hanging
        assert info.value.kind == "timeout"
        assert info.value.message == "no response from slow within 0.05s"
    finally:
        await provider.close()


# -- the timer is the attempt's timeout: ``asyncio.timeout``'s rules, entered without a coroutine -------------

async def test_the_deadline_ends_the_block_with_timeout_error_and_leaves_the_task_uncancelled() -> None:
    from gateway.providers.pool import PoolTimer

    timer = PoolTimer(1.0, 1.0, 1.0, opening=0.02)
    with pytest.raises(TimeoutError), timer:
        await asyncio.sleep(5)
    assert timer.expired
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the timer's own cancel was taken back
    await asyncio.sleep(0.03)  # and nothing fires later


async def test_a_cancel_from_elsewhere_stays_a_cancel_inside_and_after_the_deadline() -> None:
    from gateway.providers.pool import PoolTimer

    async def waits(opening: float) -> None:
        with PoolTimer(1.0, 1.0, 1.0, opening=opening):
            await asyncio.sleep(5)

    task = asyncio.create_task(waits(5.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    started = asyncio.Event()

    async def both() -> None:
        with PoolTimer(1.0, 1.0, 1.0, opening=0.0) as timer:  # due at once
            started.set()
            try:
                await asyncio.sleep(5)
            finally:
                assert timer.expired

    task = asyncio.create_task(both())
    await started.wait()
    task.cancel()  # a second, foreign cancel on top of the deadline's: the block must not swallow it
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_block_left_before_its_deadline_is_never_cut_and_held_moves_the_deadline() -> None:
    from gateway.providers.pool import PoolTimer

    with PoolTimer(1.0, 1.0, 0.4, opening=0.02) as timer:
        timer.held()  # a connection is held: first byte within first_byte_s (0.4) from now
        await asyncio.sleep(0.1)  # past the opening deadline, well within the moved one
    assert not timer.expired
    await asyncio.sleep(0.4)  # the deadline has passed since the block was left: nothing happens
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0

    timer = PoolTimer(1.0, 0.02, 0.02)  # no deadline until a connection is opened
    with pytest.raises(TimeoutError), timer:
        await asyncio.sleep(0.06)  # no deadline yet: not cut
        timer.connecting()  # connect + first byte from the start (0.04): already past, so at once
        await asyncio.sleep(5)
