"""The naive floor: ``python -m benchmarks.runner.bare_proxy PORT UPSTREAM_BASE``, an aiohttp + uvloop pass-through.

Reads the request body, POSTs it to the same path upstream on one pooled session and returns the bytes
(streams relayed chunk by chunk). No policy at all: every stage the gateway adds spends from this.
"""

from __future__ import annotations

import sys

import aiohttp
import uvloop
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


async def _start(app: web.Application) -> None:
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def _close(app: web.Application) -> None:
    await app[SESSION].close()


def make_app(upstream: str) -> web.Application:
    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app[SESSION].post(upstream + request.path, data=body,
                                             headers={"Content-Type": "application/json"}) as up:
            if not up.content_type.startswith("text/event-stream"):
                return web.Response(body=await up.read(), status=up.status, content_type=up.content_type)
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for data in up.content.iter_any():
                await resp.write(data)
            await resp.write_eof()
            return resp

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.on_startup.append(_start)
    app.on_cleanup.append(_close)
    app.router.add_route("POST", "/{tail:.*}", relay)
    return app


if __name__ == "__main__":
    uvloop.install()
    web.run_app(make_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
                backlog=4096)
