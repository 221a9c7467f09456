"""What aiohttp answers and logs on its own, before or after the gateway's handler runs.

aiohttp answers a request it cannot parse (a control byte in a header, a header over 8 KB, a bad
request line) with a ``text/plain`` 400 that quotes the offending header line, and logs it with a
traceback. An SDK can't read that answer, and the quoted line can be the caller's ``Authorization``
header, which then also lands in the error log. Here those answers use the OpenAI error shape and
carry an ``x-request-id``, and the log names the problem without quoting the request.

aiohttp also drains an unread request body after the answer; a body it cannot decode (bad gzip)
makes that drain fail, which it logs as an unhandled exception with a traceback. That is a client
sending garbage, so it is logged as one line.

Paths and methods no route serves get the same treatment, and every answer an ``x-request-id`` (``add_fallbacks``).

Slow and surplus clients (``ConnectionGuard``, the policy's ``server`` block): a connection over the caps
is closed on arrival; a request head must arrive whole within ``header_timeout_s`` of the connection
opening or of its first byte (aiohttp waits for it up to the keep-alive timeout, an hour by default).

The hooks are aiohttp's ``RequestHandler`` (one per connection, built by ``web.Server``); the
runner swaps in a ``Server`` subclass that builds ``GatewayProtocol`` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from random import getrandbits
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from gateway.errors import GatewayError
from gateway.http.guard import ConnectionGuard

log = logging.getLogger("gateway.http")

WebHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
DIRECT = web.AppKey("direct_routes", dict[str, WebHandler])  # exact POST path -> the pipeline's handler

_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (http_exceptions.LineTooLong, "A header or the request line is too long."),
    (http_exceptions.BadHttpMethod, "The HTTP method is not valid."),
    (http_exceptions.InvalidHeader, "A request header is not valid."),
    (http_exceptions.PayloadEncodingError, "The request body's framing or encoding is not valid."),
    (http_exceptions.InvalidURLError, "The request URL is not valid."),
)


def describe(exc: BaseException | None) -> str:
    """A fixed description of a protocol error: never the request's own bytes."""
    for kind, text in _REASONS:
        if isinstance(exc, kind):
            return text
    return "The HTTP request is malformed."


class GatewayProtocol(RequestHandler):
    """aiohttp's connection handler with errors in the OpenAI shape, quiet logs for bad clients, the
    connection caps and the header timeout."""

    __slots__ = ("_guard", "_source", "_head_timer")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard | None = None, **kw: Any) -> None:
        super().__init__(manager, **kw)
        self._guard = guard
        self._source: str | None = None  # set once admitted
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard is not None:
            peer = transport.get_extra_info("peername")
            source = str(peer[0]) if isinstance(peer, tuple) else ""
            if not guard.admit(source):
                transport.close()  # over a cap: closed before aiohttp reads or tracks anything
                return
            self._source = source
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._source is not None and self._guard is not None:
            self._guard.release(self._source)
            self._source = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not data and self._head_timer is None:  # aiohttp's ``resume_reading`` after each body read: no timer
            RequestHandler.data_received(self, data)  # to stop, and none to start without bytes
            return
        idle = self._head_timer is None and self._current_request is None and not self._messages
        RequestHandler.data_received(self, data)  # (not ``super()``: no super object per packet)
        whole = self._messages or self._current_request is not None
        if self._head_timer is not None:
            if whole:
                self._head_timer.cancel()  # a whole head arrived
                self._head_timer = None
        elif idle and data and not whole:
            self._arm_head_timer()  # the next head on a kept-alive connection began but is not whole yet

    def _arm_head_timer(self) -> None:
        if self._guard is not None:
            self._head_timer = self._loop.call_later(self._guard.limits.header_timeout_s, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport is not None and self._current_request is None and not self._messages:
            assert self._guard is not None
            self._guard.refused("header_timeout")  # logged by the guard, in summary
            self.force_close()

    def _process_keepalive(self) -> None:
        """aiohttp's keep-alive timer; an idle connection it closes is counted."""
        was_open = self.transport is not None
        super()._process_keepalive()
        if was_open and self.transport is None and self._guard is not None:
            self._guard.refused("idle_timeout")

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: part of an answer is out, the connection is broken
            raise ConnectionError("response already started, cannot send an error")
        rid = new_request_id()
        if status >= 500:
            log.error("request %s failed in the HTTP layer", rid, exc_info=exc)
            err = GatewayError(500, "The gateway failed to process the request.", code="internal_error")
        else:
            log.info("malformed HTTP request from %s answered %d (%s), request_id=%s", request.remote, status,
                     type(exc).__name__, rid)
            err = GatewayError(status, describe(exc), code="invalid_http_request")
        resp = web.Response(status=status, body=err.body(), content_type="application/json",
                            headers={"x-request-id": rid})
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError):
            log.info("dropped a request body that could not be decoded: %s", describe(exc.__cause__))
            return
        super().log_exception(*args, **kw)


async def unmatched(request: web.Request) -> web.Response:
    """A path or method no route serves: 404/405 in the OpenAI shape (aiohttp's own are plain text)."""
    allowed = sorted({r.method for r in request.app.router.routes()
                      if r.method != "*" and r.resource is not None
                      and r.resource.canonical == request.rel_url.path_safe})  # as the router matched it
    where = f"{request.method} {request.path}"[:200]
    if allowed:
        err = GatewayError(405, f"Method not allowed ({where}); use {', '.join(allowed)}.",
                           code="method_not_allowed", type="invalid_request_error")
        headers = {"allow": ", ".join(allowed)}
    else:
        err = GatewayError(404, f"Invalid URL ({where}).", code="unknown_url", type="invalid_request_error")
        headers = {}
    return web.Response(status=err.status, body=err.body(), content_type="application/json", headers=headers)


def request_id(headers: Mapping[str, str]) -> str:
    """The client's ``x-request-id`` when it is short and printable, else a new one."""
    rid = headers.get("x-request-id", "")
    if rid and len(rid) <= 128 and rid.isprintable():
        return rid
    return new_request_id()


def new_request_id() -> str:
    """32 random hex digits, like ``uuid4().hex`` without its ``os.urandom`` call per request (``random``
    is seeded from the OS at start and again in each forked worker)."""
    return f"{getrandbits(128):032x}"


async def _ensure_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Routes outside the pipeline (models, admin, feedback, 404s) also answer with an x-request-id."""
    if "x-request-id" not in response.headers:
        response.headers["x-request-id"] = request_id(request.headers)


def add_fallbacks(app: web.Application) -> None:
    """Call after every other route is added: JSON 404/405 for what they don't serve, and an
    x-request-id on every answer."""
    app.router.add_route("*", "/{tail:.*}", unmatched)
    app.on_response_prepare.append(_ensure_request_id)


class GatewayServer(web.Server):
    """``web.Server`` building ``GatewayProtocol`` connections (same state, one method differs)."""

    def __call__(self) -> RequestHandler:
        return GatewayProtocol(self, loop=self._loop, **self._kwargs)  # the runner's kwargs: guard, keepalive_timeout


def direct_dispatch(routes: Mapping[str, WebHandler], app_handle: WebHandler) -> WebHandler:
    """The server's request handler: a POST to one of ``routes`` goes straight to its handler; anything
    else (and a request with ``Expect``, which the router's expect handler answers) to the application.

    The pipeline's handlers need neither the router's match info nor the app's signals and have no
    middleware; the lookup is the router's own (the exact, percent-safe path), so the same requests
    reach them, minus ~2 us each of resolving and freezing a match.
    """

    def dispatch(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        # plain: the handler's own coroutine is what aiohttp awaits (no level every resume passes through)
        if request.method == "POST" and "Expect" not in request.headers:
            handler = routes.get(request.rel_url.path_safe)
            if handler is not None:
                return handler(request)
        return app_handle(request)

    return dispatch


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers protocol errors the gateway's way and hands the pipeline's
    POSTs to it directly (``direct_dispatch``)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if type(server) is web.Server:  # an aiohttp that builds something else keeps its own behaviour
            server.__class__ = GatewayServer
            routes = self.app.get(DIRECT) if isinstance(self.app, web.Application) else None
            if routes:
                server.request_handler = direct_dispatch(routes, server.request_handler)
        return server
