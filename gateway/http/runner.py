"""Running the gateway: one process on uvloop, or N worker processes sharing a port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys

from aiohttp import web

from gateway.http.drain import RESERVE_MAX_S, shut_down
from gateway.http.guard import GUARD
from gateway.http.probes import LoopWatch, ProbeRoutes, ProbeThread
from gateway.http.protocol import GatewayRunner
from gateway.http.routes import PROBES, InfoRoutes
from gateway.observability.applog import set_queue_limit
from gateway.observability.metrics import prepare_multiproc_dir, release_multiproc_dir
from gateway.policy.model import Policy

log = logging.getLogger("gateway")
PROBE_RUNNER = web.AppKey("probe_runner", web.AppRunner)  # its address: runner.addresses
# The young generation's collection threshold once the worker is up (CPython's default: 700). A request
# allocates a few hundred tracked objects that refcounting frees, but with 32 in flight the net count
# crosses 700 every request or two, and each collection walks every live young object (then again in
# generation 1): ~5% of the worker's CPU (benchmarks/README.md, "CPU per request, third pass"). At
# 10,000 they are rare; cyclic garbage (rare on the request path) waits a little longer to be freed.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Collect the young generation less often (``GC_YOUNG_THRESHOLD``); the older ones' ratios stay."""
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), older, oldest)


async def start_site(app: web.Application, host: str, port: int, reuse_port: bool = False,
                     shutdown_timeout: float = 30.0) -> web.AppRunner:
    """Start ``app`` listening; client disconnects cancel the handler (and so the upstream call).

    ``shutdown_timeout`` is what ``cleanup`` waits for each busy connection (twice: before and after
    cancelling it); ``drain.shut_down`` has already ended the requests, so it only bounds stragglers.
    """
    guard = app.get(GUARD)
    if guard is not None:
        guard.max_connections = connection_cap(guard.limits.max_connections)
    extra = {} if guard is None else {"guard": guard, "keepalive_timeout": guard.limits.keepalive_timeout_s}
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout,
                           **extra)
    probes = app.get(PROBES)
    if guard is not None and guard.limits.probe_port is not None and probes is not None:
        await _start_probes(app, probes, host, guard.limits.probe_port, reuse_port)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=2048)
    await site.start()
    return runner


async def _start_probes(app: web.Application, info: InfoRoutes, host: str, port: int, reuse_port: bool) -> None:
    """The probe listener, on its own thread (``gateway.http.probes``): up before the main one, closed only
    after it (``/readyz`` says draining meanwhile)."""
    watch = LoopWatch(info)
    beat = asyncio.create_task(watch.run())
    probes = ProbeThread(ProbeRoutes(watch, asyncio.get_running_loop()))
    app[PROBE_RUNNER] = await asyncio.to_thread(probes.start, host, port, reuse_port)

    async def stop(_: web.Application) -> None:
        await asyncio.to_thread(probes.stop)
        beat.cancel()

    app.on_cleanup.append(stop)


FD_RESERVE = 512  # descriptors kept besides client connections: listeners, probes, upstream and Redis pools, logs


def connection_cap(max_connections: int) -> int:
    """``server.max_connections``, lowered to what the open-file limit can hold (its soft value raised
    to the hard one first), with a warning when lowered.

    Past that limit ``accept`` fails for every listener, the probe port included, and the event loop
    backs off: the cap, which closes a surplus connection at once and counts it, must bind first.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY or max_connections + FD_RESERVE <= soft:
        return max_connections
    cap = max(1, soft - FD_RESERVE)
    log.warning("server.max_connections %d does not fit the open-file limit %d: capped at %d (%d kept for "
                "listeners, upstream pools and logs); raise the limit (ulimit -n) to allow more",
                max_connections, soft, cap, FD_RESERVE)
    return cap


async def _serve_one(policy: Policy, path: str, host: str, port: int, reuse_port: bool) -> None:
    from gateway.http.server import DRAIN, create_app

    grace = policy.server.shutdown_grace_s
    set_queue_limit(policy.logging.queue_lines)
    app = create_app(policy, path=path, watch=True)
    runner = await start_site(app, host, port, reuse_port, shutdown_timeout=min(RESERVE_MAX_S, grace / 5) / 4)
    # Everything built so far (modules, policy, metrics, sessions) lives as long as the process: move it
    # out of the collector's generations, so full collections only walk what requests created.
    gc.freeze()
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second signal: end the requests now
            app[DRAIN].expire()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    try:
        await stop.wait()
    finally:
        await shut_down(runner, app[DRAIN], grace)


def run_worker(policy: Policy, path: str, host: str, port: int, reuse_port: bool) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows has none
        pass
    asyncio.run(_serve_one(policy, path, host, port, reuse_port))


def run_workers(path: str, host: str, port: int, workers: int) -> int:
    """Supervise N ``gateway serve`` children on one port; forward SIGTERM/SIGINT/SIGHUP to them."""
    env = dict(os.environ)
    metrics_dir, owned = prepare_multiproc_dir(env)  # one coherent /metrics across workers
    cmd = [sys.executable, "-m", "gateway", "serve", "--policy", path, "--host", host, "--port", str(port),
           "--workers", "1", "--reuse-port", "--quiet"]
    children = [subprocess.Popen(cmd + ["--worker-id", str(i)], env=env) for i in range(workers)]

    def forward(sig: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    release_multiproc_dir(metrics_dir, owned, [child.pid for child in children])
    return max(codes, default=0)
