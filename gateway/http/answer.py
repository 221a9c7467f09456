"""A whole answer (not a stream) written as one buffer: status line, headers and body in one write.

aiohttp's ``web.Response`` goes through ``prepare``: header bookkeeping in a multidict, the
application's ``on_response_prepare`` signal, a serialiser, then ``write_eof`` on its own. A pipeline
answer needs none of that: its headers are a plain dict, its body bytes and its length known. This
answer writes them itself, straight to the connection's transport, when aiohttp calls ``prepare``
(after the handler returned, so after the pipeline's ``complete``, as ``web.Response``) or when the
gateway's own connection handler sends it (``GatewayProtocol``); what it writes is what
``web.Response`` writes (same headers, ``Date``, ``Server``, ``Connection`` rules).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

_LARGE = 16384  # a body from here on goes out after its head instead of being copied into one buffer
_EMPTY = (204, 304)  # statuses without a body
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_date: tuple[int, str] = (0, "")
_SERVER = f"Server: {SERVER_SOFTWARE}\r\n"
_LINES: dict[tuple[tuple[int, int], int], str] = {}  # (version, status) -> the status line


def http_date() -> str:
    """The ``Date`` header's value, formatted once per second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


def _status_line(version: tuple[int, int], status: int) -> str:
    """``HTTP/1.1 200 OK`` and its CRLF, kept in ``_LINES`` (read there first: a bounded memo)."""
    if len(_LINES) >= 256:
        _LINES.clear()
    line = _LINES[version, status] = f"HTTP/{version[0]}.{version[1]} {status} {_REASONS.get(status, '')}\r\n"
    return line


def _refuse(fields: Mapping[str, str]) -> None:
    """Name the header whose value has a CR or LF (aiohttp refuses them: they would split the head)."""
    for name, value in fields.items():
        if "\n" in value or "\r" in value:
            raise ValueError(f"Newline or carriage return in the {name!r} header's value")


class _Done:
    """An awaitable that is already done: awaited, it returns None at once, with no coroutine made."""

    __slots__ = ()
    __await__ = ().__iter__  # (a C method: awaiting runs no Python frame either)


_DONE: Awaitable[None] = _Done()  # type: ignore[assignment]


class WholeAnswer:
    """A complete answer: ``status``, ``body`` bytes, ``content_type`` and the other ``headers``.

    Not a ``web.StreamResponse``, whose construction alone (header multidict, cookies, state) costs as
    much as writing this answer: it has what aiohttp's request loop reads of an answer (``prepare``,
    ``write_eof``, ``keep_alive``, ``status``, ``body_length`` for an access log) and ``force_close``.
    Header names and values are the caller's; a value with a CR or LF is refused (``ValueError``), as
    aiohttp refuses it.
    """

    __slots__ = ("status", "keep_alive", "_answer", "_fields", "_ctype", "_written")

    def __init__(self, status: int, body: bytes | None, headers: Mapping[str, str], content_type: str) -> None:
        self.status = status
        self._answer = b"" if body is None or status in _EMPTY or status < 200 else body
        self._fields = headers
        self._ctype = content_type
        self.keep_alive: bool | None = None  # (an attribute, not a property: aiohttp reads it with no call)
        self._written = False

    @property
    def reason(self) -> str:
        return _REASONS.get(self.status, "")

    @property
    def body_length(self) -> int:
        return len(self._answer)

    def force_close(self) -> None:
        self.keep_alive = False

    def prepare(self, request: web.BaseRequest) -> Awaitable[None]:
        """Write the answer (once); what is returned waits while the connection's send buffer is over its
        high mark (nothing to wait for, mostly: ``_DONE``, not a coroutine)."""
        if not self._written:
            self.send(request)
            writer = request.writer
            if writer.protocol._paused:
                return writer.drain()
        return _DONE

    def send(self, request: web.BaseRequest) -> None:
        """Write the whole answer on ``request``'s connection, as ``web.Response`` would write it.

        The header lines are joined in C (``": ".join`` of each item) and the values checked for CR/LF
        in one search of their concatenation: no Python step per header.
        """
        self._written = True
        message = request._message  # (its fields, not the request's properties: no call for each)
        keep = self.keep_alive
        if keep is None:
            keep = self.keep_alive = not message.should_close  # ``request.keep_alive``
        fields = self._fields
        values = "".join(fields.values())
        if "\n" in values or "\r" in values:
            _refuse(fields)
        version = message.version
        status = self.status
        body = self._answer
        lines = "\r\n".join(map(": ".join, fields.items())) + "\r\n" if fields else ""
        if status in _EMPTY or status < 200:  # no body, so no length either (RFC 9110 8.6)
            kind = f"Content-Type: {self._ctype}\r\n"
        else:
            kind = f"Content-Type: {self._ctype}\r\nContent-Length: {len(body)}\r\n"
        if version[1] == 0 and version[0] == 1:
            connection = "Connection: keep-alive\r\n" if keep else ""
        else:
            connection = "" if keep else "Connection: close\r\n"
        line = _LINES.get((version, status)) or _status_line(version, status)
        head = (f"{line}{lines}{kind}"
                f"Date: {http_date()}\r\n{_SERVER}{connection}\r\n").encode()
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        if len(body) < _LARGE:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)

    def write_eof(self, data: bytes = b"") -> Awaitable[None]:
        return _DONE
