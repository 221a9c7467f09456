"""One upstream POST on a pooled aiohttp connection, without ``ClientSession``'s per-call machinery.

``ClientSession.post`` builds, per call, a ``ClientRequest`` (URL, header multidict, auto headers,
payload object), a task that writes the body (Python 3.11), a ``ClientResponse`` and timer contexts.
Here the provider session's own connector (its pool, limits, TLS, DNS cache and ``TimedConnector``
hooks) lends a connection, the request head is one string, and aiohttp's response protocol (its C
parser and ``StreamReader``) reads the answer. Measured on one upstream call (``benchmarks/bench_http_path.py
--client``): about half the CPU of ``session.post`` + ``read``.

Left out, because the gateway's upstream calls never want them: redirects (an LLM API answers; a 3xx
is the upstream's answer, passed on), cookies (a session's jar would carry one tenant's cookies into
another's calls), proxies from the environment, ``Expect: 100-continue`` and request compression.
Sent like aiohttp: ``Host``, ``Accept: */*`` (unless the caller gives an ``Accept``), ``Accept-Encoding:
gzip, deflate``, ``Content-Length``; answers are decompressed. A header value with a CR or LF is
refused (``ValueError``), as aiohttp does. The caller's ``OWNED`` headers are not sent (a signer must
leave them out of what it signs).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from aiohttp import http_exceptions
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from multidict import CIMultiDictProxy
from yarl import URL

READ_BUFSIZE = 2**16  # ClientSession's default read_bufsize
LINGER_S = 1.0  # after a stream's last event, how long its body's end is waited for before closing
OWNED = frozenset({"host", "content-length", "transfer-encoding", "connection", "accept-encoding", "expect"})
# ``ClientRequest``, ``ResponseHandler.set_response_params``/``read`` and ``BaseConnector.connect(req, traces,
# timeout)`` are what this uses; an aiohttp without them keeps ``session.post`` (``HTTPProvider._post``).
AVAILABLE = hasattr(ResponseHandler, "set_response_params") and hasattr(ResponseHandler, "read")
# ``AnswerHandler`` reads aiohttp's flow-control flags (``BaseProtocol``'s slots) and parser
LEAN_HANDLER = AVAILABLE and {"_reading_paused", "_buffer_paused", "_parser"} <= set(BaseProtocol.__slots__)


class AnswerHandler(ResponseHandler):
    """The protocol of a provider pool's connections (``pool.TimedConnector``): aiohttp's, less two costs of
    every answer that change nothing.

    ``prepare`` keeps the connection's response parser from one ``post`` to the next (aiohttp builds one
    per request, ~5k instructions): a connection back in the pool has read its last answer to its end,
    and the parser is then ready for the next one, as llhttp is between keep-alive messages. Anything
    else that set the connection up (``session.post``) brought its own parser, and a new one is built.

    ``resume_reading`` does nothing when nothing is paused: aiohttp's runs the parser on no bytes after
    every read of a body (~6k instructions per answer), which only resumes a parser that a pause held.
    """

    _prepared: Any = None  # the parser ``prepare`` built last

    def prepare(self) -> None:
        """``set_response_params`` as ``post`` wants it, once per parser."""
        parser = self._parser
        if parser is None or parser is not self._prepared:
            # read_until_eof: an answer with neither a length nor chunks ends with the connection, as in a session
            self.set_response_params(read_until_eof=True, read_bufsize=READ_BUFSIZE)
            self._prepared = self._parser

    def resume_reading(self, resume_parser: bool = True) -> None:
        if self._reading_paused or self._buffer_paused:
            super().resume_reading(resume_parser)


class _OriginRequest(ClientRequest):
    """The request the connector pools by (scheme, host, port, TLS): one per origin, its key computed once."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.connection_key = super().connection_key  # type: ignore[misc]

    connection_key = None  # type: ignore[assignment]  # an instance attribute, not the per-call property


class Target:
    """Where one URL's calls go: its origin's pooled-connection key and the head's fixed lines."""

    __slots__ = ("origin", "head")

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, encoded: bool = False) -> None:
        """``encoded``: ``url`` is already percent-encoded and its path goes out byte for byte (as signed)."""
        parsed = URL(url, encoded=encoded)
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.origin = _OriginRequest("POST", parsed.origin(), loop=loop)
        name = parsed.raw_host.lower()  # an encoded URL keeps its case; a SigV4 signer lower-cases the host
        host = name if parsed.is_default_port() else f"{name}:{parsed.port}"
        if ":" in name and not name.startswith("["):  # an IPv6 literal
            host = f"[{name}]" + ("" if parsed.is_default_port() else f":{parsed.port}")
        self.head = f"POST {parsed.raw_path_qs or '/'} HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: gzip, deflate\r\n"


class Exchange:
    """The answer: what the adapters read of an ``aiohttp.ClientResponse`` (status, headers, ``content``,
    ``read``, ``release``, ``close``, ``closed``). The connection goes back to the pool when the body
    has been read to its end, or is closed."""

    __slots__ = ("status", "reason", "headers", "content", "_conn")

    def __init__(self, status: int, reason: str, headers: CIMultiDictProxy[str], content: aiohttp.StreamReader,
                 conn: Any) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content
        if content.is_eof():  # the body came whole with the head (most answers): back to the pool now
            self._conn = None
            conn.release()
        else:
            self._conn = conn
            content.on_eof(self.release)

    @property
    def closed(self) -> bool:
        return self._conn is None

    async def read(self) -> bytes:
        body = await self.content.read()
        self.release()
        return body

    def release(self) -> None:
        """Back to the pool if the body was read whole (aiohttp closes it instead if not reusable)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if self.content.is_eof():
                conn.release()
            else:
                conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def release_when_done(self, grace_s: float | None = None) -> None:
        """The answer's last event is in: the connection goes back to the pool when its body ends (a
        chunked stream's terminator often comes a moment after the last event), or is closed after
        ``grace_s``. Closing or releasing the answer afterwards changes nothing; without this, a
        stream read to its last event would cost a new connection (and TLS handshake) per stream."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        content = self.content
        if content.is_eof():
            conn.release()
            return
        held = [conn]

        def settle() -> None:
            if held:
                c = held.pop()
                c.release() if content.is_eof() else c.close()

        timer = asyncio.get_running_loop().call_later(LINGER_S if grace_s is None else grace_s, settle)

        def ended() -> None:
            timer.cancel()
            settle()

        content.on_eof(ended)

    def __del__(self) -> None:
        if self._conn is not None:  # dropped unread (a cancelled caller): don't leak the pool slot
            with contextlib.suppress(Exception):  # (a closed loop at exit: nothing left to leak)
                self._conn.close()


def release_when_done(resp: object) -> None:
    """``Exchange.release_when_done`` for an answer that is one (an ``aiohttp.ClientResponse`` is closed
    by its reader as before)."""
    if isinstance(resp, Exchange):
        resp.release_when_done()


def header_lines(headers: dict[str, str]) -> tuple[str, str]:
    """``headers`` as head lines (the ones the exchange owns left out), and the ``Accept: */*`` line to
    add if they have no ``Accept`` (else ""; a second one would join it: ``*/*, application/json``)."""
    parts = []
    accept = "Accept: */*\r\n"
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"header {name!r} has a newline in it")
        low = name.lower()
        if low not in OWNED:
            parts.append(f"{name}: {value}\r\n")
            if low == "accept":
                accept = ""
    return "".join(parts), accept


def head_bytes(target: Target, headers: dict[str, str], length: int) -> bytes:
    """The request head: the target's fixed lines, ``headers`` (``header_lines``), and the body's length."""
    lines, accept = header_lines(headers)
    return f"{target.head}{lines}{accept}Content-Length: {length}\r\n\r\n".encode("latin-1")


def head_with_id(target: Target, lines: str, accept: str, request_id: str, length: int) -> bytes:
    """``head_bytes`` of headers whose ``header_lines`` are ``(lines, accept)`` followed by ``x-request-id``
    (a provider's fixed headers, joined once, and the request's id)."""
    if "\n" in request_id or "\r" in request_id:
        raise ValueError("header 'x-request-id' has a newline in it")
    return f"{target.head}{lines}x-request-id: {request_id}\r\n{accept}Content-Length: {length}\r\n\r\n" \
        .encode("latin-1")


async def post(connector: aiohttp.BaseConnector, timeout: aiohttp.ClientTimeout, target: Target,
               headers: dict[str, str] | None, data: bytes, head: bytes | None = None) -> Exchange:
    """Send one POST on a pooled connection and wait for the answer's head (``head``, when given, is
    ``head_bytes`` of the headers, already built; ``headers`` are then not read).

    Raises what ``session.post`` raises for a dead upstream (``aiohttp.ClientConnectionError``,
    ``OSError``), and ``aiohttp.ClientResponseError`` for an answer that is not HTTP."""
    if head is None:
        head = head_bytes(target, headers or {}, len(data))
    conn = await connector.connect(target.origin, [], timeout)
    try:
        proto = conn.protocol
        transport = proto.transport if proto is not None else None
        if transport is None or transport.is_closing():
            raise aiohttp.ServerDisconnectedError()
        if type(proto) is AnswerHandler:
            proto.prepare()
        else:  # read_until_eof: an answer with neither a length nor chunks ends with the connection, as in a session
            proto.set_response_params(read_until_eof=True, read_bufsize=READ_BUFSIZE)
        if len(data) < 16384:
            transport.write(head + data)
        else:  # a large body is not copied to go out with its head
            transport.writelines((head, data))
        while True:
            try:
                message, payload = await proto.read()
            except http_exceptions.HttpProcessingError as exc:
                raise aiohttp.ClientResponseError(target.origin.request_info, (), status=exc.code,
                                                  message=exc.message, headers=exc.headers) from exc
            if not 100 <= message.code < 200 or message.code == 101:
                break
    except BaseException:
        conn.close()
        raise
    return Exchange(message.code, message.reason, message.headers, payload, conn)
