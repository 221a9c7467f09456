"""Server-sent events from upstreams: parse a stream into (event, data) pairs. (Writing: ``Framing``.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import StreamReader

DONE = b"[DONE]"


async def iter_sse(content: StreamReader) -> AsyncIterator[tuple[bytes | None, bytes]]:
    """Yield ``(event, data)`` per SSE event; multi-line data is joined with newlines.

    Ends when the upstream closes; a trailing event without its blank line is still yielded
    (the caller decides whether an end without ``[DONE]`` is a cut).
    """
    event: bytes | None = None
    data: list[bytes] = []
    async for raw in content:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield event, b"\n".join(data)
            event, data = None, []
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            event = line[6:].strip()
        # comments (":") and other fields (id:, retry:) are ignored
    if data:
        yield event, b"\n".join(data)
