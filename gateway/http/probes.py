"""The probe listener (``server.probe_port``) on its own thread and event loop.

On the main loop a probe waits behind whatever request work is queued there: bench_connections.py
measured ``/healthz`` on the probe port at p99 449 ms (3 of 50 over 2 s) while 5,000 connections'
requests arrived in waves. Here the listener runs in a thread, so a probe waits at most for the GIL
(handed over every few milliseconds), and answers from what the main loop last reported:

* ``/healthz``: 200 while the main loop's heartbeat (``LoopWatch``, every ``BEAT_S``) is fresher than
  ``STALL_S``; then 503 ``stalled``, so a wedged loop still gets the process restarted;
* ``/readyz``: the readiness the main loop computed on its last beat (the backend ping included),
  ``draining`` as soon as a drain starts, ``not_ready`` when the beat is older than ``STALE_S``;
* ``/metrics``: rendered on the main loop when it answers within ``METRICS_WAIT_S``; otherwise here,
  with the shared-state gauges of the previous scrape (counters and histograms are always current).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.http.replies import json_reply

if TYPE_CHECKING:
    from gateway.http.routes import InfoRoutes

BEAT_S = 1.0
STALE_S = 5.0  # /readyz: a main loop silent this long is not ready
STALL_S = 30.0  # /healthz: a main loop silent this long is dead
METRICS_WAIT_S = 2.0


class LoopWatch:
    """The main loop's heartbeat and its last readiness answer, for the probe thread to read."""

    def __init__(self, info: InfoRoutes) -> None:
        self.info = info
        self.beat = time.monotonic()
        self.ready: tuple[dict[str, Any], int] = ({"status": "starting"}, 503)

    async def run(self) -> None:
        while True:
            self.beat = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STALE_S):
                    self.ready = await self.info.readiness()
            await asyncio.sleep(BEAT_S)


class ProbeRoutes:
    """The probe thread's handlers: they only read what ``LoopWatch`` wrote, or ask the main loop."""

    def __init__(self, watch: LoopWatch, main: asyncio.AbstractEventLoop) -> None:
        self.watch = watch
        self.main = main

    def _silent_s(self) -> float:
        return time.monotonic() - self.watch.beat

    async def healthz(self, _: web.Request) -> web.Response:
        silent = self._silent_s()
        if silent > STALL_S:
            return json_reply({"status": "stalled", "event_loop_silent_s": round(silent, 1)}, 503)
        return json_reply({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        info = self.watch.info
        if info.drain is not None and info.drain.draining:
            return json_reply({"status": "draining"}, 503)
        silent = self._silent_s()
        if silent > STALE_S:
            return json_reply({"status": "not_ready", "event_loop_silent_s": round(silent, 1)}, 503)
        body, status = self.watch.ready
        return json_reply(body, status)

    async def metrics(self, _: web.Request) -> web.Response:
        obs = self.watch.info.obs
        future = asyncio.run_coroutine_threadsafe(obs.render(), self.main)
        try:
            body, ctype = await asyncio.wait_for(asyncio.wrap_future(future), METRICS_WAIT_S)
        except TimeoutError:
            future.cancel()
            body, ctype = obs.metrics.render()  # counters are thread-safe; shared gauges from the last scrape
        return web.Response(body=body, headers={"content-type": ctype})


class ProbeThread:
    """An aiohttp runner for the probe routes on a daemon thread's own loop; ``runner`` once started."""

    def __init__(self, routes: ProbeRoutes) -> None:
        self.routes = routes
        self.runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._up = threading.Event()
        self._error: BaseException | None = None

    def start(self, host: str, port: int, reuse_port: bool, timeout: float = 10.0) -> web.AppRunner:
        """Listen on ``host:port`` (blocks until bound; raises what binding raised)."""
        self._thread = threading.Thread(target=self._run, args=(host, port, reuse_port), name="probes", daemon=True)
        self._thread.start()
        if not self._up.wait(timeout):
            raise RuntimeError("the probe listener did not start")
        if self._error is not None:
            raise self._error
        assert self.runner is not None
        return self.runner

    def _run(self, host: str, port: int, reuse_port: bool) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._listen(host, port, reuse_port))
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it
            self._error = exc
            self._up.set()
            loop.close()
            return
        self._up.set()
        loop.run_forever()
        loop.run_until_complete(self.runner.cleanup() if self.runner is not None else asyncio.sleep(0))
        loop.close()

    async def _listen(self, host: str, port: int, reuse_port: bool) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.routes.healthz)
        app.router.add_get("/readyz", self.routes.readyz)
        app.router.add_get("/metrics", self.routes.metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        self.runner = runner
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and end the thread (bounded)."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
