"""The provider interface: one small contract every upstream adapter implements.

A provider takes an OpenAI-shaped request (``UpstreamRequest``) and returns an OpenAI-shaped
``UpstreamResponse``: a whole body, or a stream of ``chat.completion.chunk``/completion JSON payloads
(one bytes object per SSE event, without the ``data: `` framing and without ``[DONE]``). Adapters for
other wire formats (Anthropic) translate both ways so nothing after them knows the difference.

Every HTTP status comes back as a response (error bodies translated to the OpenAI error shape); the
upstream stage decides what is retryable. Transport failures (connect, timeout, a stream cut, a
broken protocol) raise ``UpstreamError``, also from inside ``events`` mid-stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import GatewayError
from gateway.policy.model import ProviderSpec

Endpoint = Literal["chat", "completions", "embeddings"]


@dataclass(slots=True)
class UpstreamRequest:
    endpoint: Endpoint
    body: dict  # OpenAI-shaped request body, ``model`` already set to the deployment's model
    stream: bool
    request_id: str
    headers: dict[str, str] = field(default_factory=dict)  # extra headers to forward (already filtered)
    first_byte_timeout_s: float | None = None  # overrides the provider's, e.g. from a request deadline
    total_timeout_s: float | None = None
    # The client's own body, when it speaks this provider's wire format (``Provider.native_surface``):
    # sent as is (model set to the deployment's), so nothing the internal form lacks is lost.
    native: dict | None = None
    # The client's bytes of ``body``, when they say exactly what it says (``model`` included): a provider
    # that sends the OpenAI form as is may send them instead of encoding ``body`` again.
    raw: bytes | None = None


@dataclass(slots=True)
class NativeAnswer:
    """A provider's answer in its own wire format (the lossless path), beside the internal form.

    ``body`` is a whole answer; a stream appends each raw SSE frame to ``frames`` as it is read, so
    the writer can send exactly the provider's bytes while the pipeline reads the translated chunks.
    """

    body: bytes | None = None
    frames: list[bytes] = field(default_factory=list)
    final: Any = None  # the whole answer object a stream ended with, when its format carries one

    def take(self) -> bytes:
        """The frames read since the last call."""
        out, self.frames = b"".join(self.frames), []
        return out


@dataclass(slots=True)
class UpstreamResponse:
    """An answer: a whole body, or a stream of SSE JSON payloads (no ``data:`` framing, no ``[DONE]``)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # non-stream answer (or an error body)
    events: AsyncIterator[bytes] | None = None  # stream: one JSON payload per SSE event
    close: Callable[[], Awaitable[None]] | None = None  # release the connection (cancel if mid-stream)
    native: NativeAnswer | None = None  # the same answer in the provider's wire format (lossless path)

    @property
    def is_stream(self) -> bool:
        return self.events is not None

    async def aclose(self) -> None:
        if self.close is not None:
            close, self.close = self.close, None
            await close()


def local_error(err: GatewayError) -> UpstreamResponse:
    """A request the provider refuses before any call (it cannot express it), as an answer."""
    return UpstreamResponse(status=err.status, headers={}, body=err.body())


class Provider:
    """Base class for upstream adapters. One instance per ``ProviderSpec``, shared by all requests."""

    type: str = "base"
    native_surface: str | None = None  # the inbound surface whose bodies this provider takes as they are

    def __init__(self, spec: ProviderSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    async def start(self) -> None:
        """Open pooled connections; called once before first use."""

    async def close(self) -> None:
        """Close pooled connections."""

    def watch_pool(self, observer: Callable[[str, float, bool], None]) -> None:
        """Report each wait for a pooled connection: ``observer(provider, seconds, timed_out)``.
        Called once, before first use; a provider without a pool ignores it."""

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        raise NotImplementedError

    def secrets(self) -> tuple[str, ...]:
        """Keys an upstream answer could echo, redacted before it reaches a client."""
        return (self.spec.api_key,) if self.spec.api_key else ()


def retry_after_seconds(headers: dict[str, str] | object) -> float | None:
    """Parse ``retry-after-ms`` / ``retry-after`` (seconds) from upstream headers."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    ms = get("retry-after-ms") or get("Retry-After-Ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    s = get("retry-after") or get("Retry-After")
    if s:
        try:
            return max(0.0, float(s))
        except ValueError:
            return None
    return None
