"""``Drain`` alone: a shutdown cut is told apart from a client leaving, and completing requests are spared."""

from __future__ import annotations

import asyncio

from gateway.http.drain import Drain


async def _request(drain: Drain, log: list[str], work_s: float = 10.0, settle_s: float = 0.0) -> None:
    task = drain.enter()
    try:
        await asyncio.sleep(work_s)
        log.append("finished")
    except asyncio.CancelledError:
        if not drain.cut(task):
            log.append("client left")
            raise
        log.append("cut")
    finally:
        drain.completing(task)
        await asyncio.sleep(settle_s)  # ``complete``: a cut must not interrupt it
        log.append("completed")
        drain.leave(task)


async def _scenario() -> dict:
    drain = Drain()
    cut_log: list[str] = []
    left_log: list[str] = []
    settling_log: list[str] = []
    cut = asyncio.create_task(_request(drain, cut_log))
    left = asyncio.create_task(_request(drain, left_log))
    settling = asyncio.create_task(_request(drain, settling_log, work_s=0.01, settle_s=0.2))
    await asyncio.sleep(0.05)  # all three inside; ``settling`` is in its complete
    assert len(drain) == 3
    left.cancel()  # the client goes, then the grace runs out for everyone
    expired = drain.expire()
    idle = await drain.wait_idle(2.0)
    results = await asyncio.gather(cut, left, settling, return_exceptions=True)
    return {"expired": expired, "idle": idle, "open": len(drain), "cut": cut_log, "left": left_log,
            "settling": settling_log, "left_result": type(results[1]).__name__, "cut_cancelling": cut.cancelling()}


def test_expire_cuts_working_requests_spares_completing_ones_and_leaves_client_cancels_alone() -> None:
    out = asyncio.run(_scenario())
    assert out["expired"] == 2  # the working two; the completing one is not cancelled
    assert out["idle"] and out["open"] == 0
    assert out["cut"] == ["cut", "completed"] and out["cut_cancelling"] == 0
    assert out["left"] == ["client left", "completed"] and out["left_result"] == "CancelledError"
    assert out["settling"] == ["finished", "completed"]
