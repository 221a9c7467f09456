"""A whole answer (not a stream) written as one buffer: status line, headers and body in one write.

aiohttp's ``web.Response`` goes through ``prepare``: header bookkeeping in a multidict, the
application's ``on_response_prepare`` signal, a serialiser, then ``write_eof`` on its own. A pipeline
answer needs none of that: its headers are a plain dict, its body bytes and its length known. This
response writes them itself when aiohttp calls ``prepare`` (after the handler returned, so after the
pipeline's ``complete``, as ``web.Response``), through the request's public ``writer``; what it
writes is what ``web.Response`` writes (same headers, ``Date``, ``Server``, ``Connection`` rules).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE

_LARGE = 16384  # a body from here on goes out after its head instead of being copied into one buffer
_EMPTY = (204, 304)  # statuses without a body
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_date: tuple[int, str] = (0, "")


def http_date() -> str:
    """The ``Date`` header's value, formatted once per second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


class WholeAnswer(web.StreamResponse):
    """A complete answer: ``status``, ``body`` bytes, ``content_type`` and the other ``headers``.

    Header names and values are the caller's; a value with a CR or LF is refused (``ValueError``), as
    aiohttp refuses it.
    """

    def __init__(self, status: int, body: bytes | None, headers: Mapping[str, str], content_type: str) -> None:
        super().__init__(status=status, reason=_REASONS.get(status, ""))
        self._answer = b"" if body is None or status in _EMPTY or status < 200 else body
        self._fields = headers
        self._ctype = content_type
        self._keep: bool | None = None
        self._written = False

    @property
    def keep_alive(self) -> bool | None:
        return self._keep

    def force_close(self) -> None:
        self._keep = False

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._written:
            return None
        self._written = True
        keep = self._keep
        if keep is None:
            keep = self._keep = request.keep_alive
        version = request.version
        lines = [f"HTTP/{version[0]}.{version[1]} {self.status} {self.reason}\r\n"]
        for name, value in self._fields.items():
            if "\n" in value or "\r" in value:
                raise ValueError(f"Newline or carriage return in the {name!r} header's value")
            lines.append(f"{name}: {value}\r\n")
        body = self._answer
        if self.status in _EMPTY or self.status < 200:  # no body, so no length either (RFC 9110 8.6)
            lines.append(f"Content-Type: {self._ctype}\r\n")
        else:
            lines.append(f"Content-Type: {self._ctype}\r\nContent-Length: {len(body)}\r\n")
        lines.append(f"Date: {http_date()}\r\nServer: {SERVER_SOFTWARE}\r\n")
        if version[1] == 0 and version[0] == 1:
            if keep:
                lines.append("Connection: keep-alive\r\n")
        elif not keep:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8")
        writer = request.writer
        if len(body) < _LARGE:
            await writer.write_eof(head + body)
        else:
            await writer.write(head)
            await writer.write_eof(body)
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None
