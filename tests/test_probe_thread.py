"""The probe listener runs on its own thread: it answers while the main event loop is busy, and says so
when that loop stops beating (``gateway.http.probes``).

Was (issue 14, bench_connections.py): with 5,000 connections' requests arriving in waves, ``/healthz``
on the probe port (then served by the main loop) took up to 449 ms at p99 and 3 of 50 timed out at 2 s.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

from gateway.http.probes import STALE_S, STALL_S, LoopWatch, ProbeRoutes
from tests.support.harness import eventually
from tests.support.policies import basic_policy


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_probes_answer_while_the_main_loop_is_blocked(make_gateway, upstream, servers):
    from gateway.http.runner import PROBE_RUNNER

    gw = make_gateway(basic_policy(upstream.url, defaults="server: {probe_port: 0}"))
    probe = f"http://127.0.0.1:{gw.app[PROBE_RUNNER].addresses[0][1]}"
    assert eventually(lambda: _get(probe + "/readyz") == 200)  # the main loop's first beat came
    release = threading.Event()
    servers.loop.call_soon_threadsafe(release.wait, 10)  # the gateway's loop does nothing else until released
    try:
        answers = [_get(probe + path) for path in ("/healthz", "/readyz")]  # would hang if served by that loop
    finally:
        release.set()
    assert answers == [200, 200]


async def test_a_silent_main_loop_turns_healthz_and_readyz_to_503():
    class Info:
        drain = None

    watch = LoopWatch(Info())  # type: ignore[arg-type]
    watch.ready = ({"status": "ready"}, 200)
    routes = ProbeRoutes(watch, main=None)  # type: ignore[arg-type]
    assert [(await routes.healthz(None)).status, (await routes.readyz(None)).status] == [200, 200]
    watch.beat = time.monotonic() - STALE_S - 1
    assert [(await routes.healthz(None)).status, (await routes.readyz(None)).status] == [200, 503]
    watch.beat = time.monotonic() - STALL_S - 1
    assert (await routes.healthz(None)).status == 503
