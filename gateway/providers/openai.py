"""OpenAI-compatible upstreams: OpenAI, vLLM, Ollama, Groq, Together, and anything speaking the API.

One pooled ``aiohttp.ClientSession`` per provider with keep-alive. Timeouts: the wait for a pooled
connection (``pool_s``, see ``pool.py``), connect, first byte (headers; its timer starts once a
connection is held), and total (the whole answer, also from then; on streams each read also waits at
most ``first_byte_s`` so a stalled stream is cut). Every HTTP status comes back as a response (the upstream stage decides what is
retryable); transport failures raise ``UpstreamError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

import aiohttp
import orjson

from gateway import __version__
from gateway.errors import UpstreamError
from gateway.http.sse import DONE, iter_sse
from gateway.policy.checkers import BOOLEAN, string
from gateway.policy.model import ProviderSpec
from gateway.providers import exchange
from gateway.providers.base import NativeAnswer, Provider, UpstreamRequest, UpstreamResponse
from gateway.providers.deadlines import Deadlines
from gateway.providers.keys import KeySource
from gateway.providers.openai_responses import EventsToChunks, StreamFailed, response_to_chat
from gateway.providers.pool import HOOKED, TIMER, PoolObserver, PoolTimer, TimedConnector, pool_trace
from gateway.providers.watchdog import Watchdog

# Ours instead of aiohttp's (which names Python and aiohttp): given, aiohttp adds none, without the
# per-call header work its ``skip_auto_headers`` costs. A provider's configured ``headers`` may replace it.
USER_AGENT = f"llm-gateway/{__version__}"
LEAN = HOOKED and exchange.AVAILABLE  # ``exchange.post`` needs the connector hooks the pool timer uses
PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}


@dataclass(frozen=True, slots=True)
class OpenAIOptions:
    """The ``openai`` type's own keys; the compatible presets change the defaults of the quirks.

    ``stream_options``: the server accepts ``stream_options`` (Mistral answers 422 to it and puts
    usage on its last chunk anyway), so the gateway's usage request is left out when false.
    ``max_completion_tokens``: the server knows that name; when false it is sent as ``max_tokens``.
    ``usage_field``: an object on a stream chunk that carries the usage instead of ``usage`` (Groq's
    ``x_groq``); it is moved to ``usage`` so the gateway and the client read it where OpenAI puts it.
    """

    responses: bool = False  # the deployment serves /v1/responses itself (OpenAI does; many compatibles don't)
    stream_options: bool = True
    max_completion_tokens: bool = True
    usage_field: str = ""


OPTION_KEYS = {"responses": BOOLEAN, "stream_options": BOOLEAN, "max_completion_tokens": BOOLEAN,
               "usage_field": string()}
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "content-type",
        "date",
        "server",
    }
)


class HTTPProvider(Provider):
    """An HTTP adapter's pooled session (opened on start or first use), its key and its timed POST.

    The key is read per request from ``self.key`` (``keys.KeySource``: the policy's ``api_key``, or
    ``api_key_file`` re-read on change), so a rotated key applies to the next request.
    """

    _static_headers: dict[str, str]
    signed_paths = False  # URLs are already percent-encoded and go out byte for byte (a signature covers them)

    def __init__(self, spec: ProviderSpec) -> None:
        super().__init__(spec)
        self._session: aiohttp.ClientSession | None = None
        self._pool_observer: PoolObserver | None = None
        self._targets: dict[str, exchange.Target] = {}  # url -> its pooled origin and head (``exchange``)
        self._fixed: tuple[dict[str, str], str, str] | None = None  # ``_fixed_lines``, for the current key
        self._deadlines: Deadlines | None = None  # the attempts' (``PoolTimer``), on the session's loop
        self._lender: tuple[aiohttp.BaseConnector, aiohttp.ClientTimeout] | None = None  # the session's, for ``exchange``
        self.key = KeySource(spec.api_key, spec.api_key_file, spec.name)

    def key_headers(self) -> dict[str, str]:
        """The headers carrying the current key, added to every call by ``_post``."""
        return {}

    def secrets(self) -> tuple[str, ...]:
        return self.key.secrets()

    def watch_pool(self, observer: PoolObserver) -> None:
        self._pool_observer = observer

    async def start(self) -> None:
        if self._session is None:
            self._session = session = new_session(self.spec)
            self._deadlines = Deadlines(asyncio.get_running_loop())  # the loop, taken once (each look-up: a getpid)
            self._lender = (session.connector, session.timeout)  # type: ignore[assignment]  # (read once, not per call)
        self.key.start()

    async def close(self) -> None:
        await self.key.close()
        if self._session is not None:
            session, self._session, self._lender = self._session, None, None
            self._targets.clear()
            await session.close()

    async def _post(
        self, req: UpstreamRequest, url: str, data: bytes
    ) -> tuple[exchange.Exchange | aiohttp.ClientResponse, float, float, float]:
        """POST one attempt and wait for the response headers; ``(response, first_byte_s, total_s,
        deadline)``, deadline on the loop clock. Transport failures become ``UpstreamError``; the wait for
        a pooled connection has its own bound, and first byte counts from the connection.

        The POST is ``exchange.post`` on the session's connector (``session.post``'s per-call work left
        out), or ``session.post`` on an aiohttp without the hooks either needs.

        One coroutine, no helper awaited: every resume of the request's task passes through each level.
        """
        session = self._session
        if session is None:
            await self.start()
            session = self._session
            assert session is not None
        t = self.spec.timeouts
        first_byte, total = req.first_byte_timeout_s or t.first_byte_s, req.total_timeout_s or t.total_s
        keyed = self.key_headers()
        fixed = self._fixed
        if not LEAN or req.headers:
            fixed = None
        elif fixed is None or fixed[0] is not keyed:  # (the same dict: its lines are ``fixed``'s, no call)
            fixed = self._fixed_lines(keyed)
        headers = None if fixed is not None else {"user-agent": USER_AGENT, **self._static_headers, **keyed,
                                                  **req.headers, "x-request-id": req.request_id}
        opening = total if total < first_byte else first_byte  # (``min``'s answer, without its call)
        # The hooked connector sets the deadline (pool.py); with aiohttp's tracing it only moves it.
        timer = PoolTimer(t.pool_s, t.connect_s, opening, None if HOOKED else t.connect_s + opening, self._deadlines)
        token = TIMER.set(timer)
        try:
            with timer:  # the attempt's timeout (``asyncio.timeout``'s, without its coroutines)
                if LEAN:
                    target = self._targets.get(url) or self._target(url)
                    head = None if fixed is None else \
                        exchange.head_with_id(target, fixed[1], fixed[2], req.request_id, len(data))
                    connector, timeout = self._lender or (session.connector, session.timeout)
                    resp = await exchange.post(connector, timeout, target, headers, data, head)  # type: ignore[arg-type]
                else:
                    resp = await session.post(url, data=data, headers=headers, trace_request_ctx=timer,
                                              allow_redirects=False)
        except TimeoutError as exc:
            if timer.queued_at is not None:  # still waiting for the pool
                timer.timed_out = True
                raise UpstreamError("timeout", f"no free connection to {self.name} within {timer.pool_s:g}s "
                                    "(its max_connections are all busy)") from exc
            raise UpstreamError("timeout", f"no response from {self.name} within {first_byte:g}s") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise UpstreamError("connect", f"cannot reach {self.name}: {type(exc).__name__}") from exc
        except aiohttp.ClientResponseError as exc:
            raise UpstreamError("protocol", f"{self.name} sent an answer that is not valid HTTP") from exc
        finally:
            TIMER.reset(token)
            if self._pool_observer is not None and (timer.waited_s or timer.queued_at is not None):
                waited = timer.waited_s or timer.loop.time() - (timer.queued_at or 0.0)
                self._pool_observer(self.name, waited, timer.timed_out)
        deadline = (timer.held_at or timer.loop.time()) + total  # the pool wait is not the upstream's time
        return resp, first_byte, total, deadline

    def _fixed_lines(self, keyed: dict[str, str]) -> tuple[dict[str, str], str, str] | None:
        """``(keyed, lines, accept)``: the head lines of the headers every call sends (user agent, the
        provider's, the key's ``keyed``), joined once per key (``exchange.header_lines``); None when they
        name ``x-request-id`` (the general merge then places the request's)."""
        fixed = self._fixed
        if fixed is not None and fixed[0] == keyed:
            return fixed
        merged = {"user-agent": USER_AGENT, **self._static_headers, **keyed}
        if "x-request-id" in merged:
            return None
        lines, accept = exchange.header_lines(merged)
        self._fixed = fixed = (keyed, lines, accept)
        return fixed

    def _target(self, url: str) -> exchange.Target:
        if len(self._targets) >= 256:  # URLs with a model in them (gemini): bounded, rebuilt on demand
            self._targets.clear()
        target = self._targets[url] = exchange.Target(url, asyncio.get_running_loop(), encoded=self.signed_paths)
        return target


class OpenAIProvider(HTTPProvider):
    type = "openai"

    def __init__(self, spec: ProviderSpec) -> None:
        super().__init__(spec)
        self._base = spec.base_url.rstrip("/")
        self._static_headers = {"content-type": "application/json", **dict(spec.headers)}
        options = spec.options if isinstance(spec.options, OpenAIOptions) else OpenAIOptions()
        if options.responses:
            self.native_surface = "responses"
        self._drop = () if options.stream_options else ("stream_options",)
        self._rename = not options.max_completion_tokens
        self._usage_field = options.usage_field
        self._keyed: tuple[str, dict[str, str]] | None = None  # ``key_headers``' answer, for the key it names

    # --- hooks for variants (azure_openai) ---------------------------------------------------------
    def key_headers(self) -> dict[str, str]:
        """Built once per key (callers copy it, never change it)."""
        key = self.key.current()
        keyed = self._keyed
        if keyed is None or keyed[0] is not key:
            keyed = self._keyed = (key, {"authorization": f"Bearer {key}"} if key else {})
        return keyed[1]

    def url(self, req: UpstreamRequest) -> str:
        return self._base + PATHS[req.endpoint]

    def encode(self, req: UpstreamRequest) -> bytes:
        body = req.body
        if self._drop or self._rename:
            body = compatible_body(body, self._drop, self._rename)
        elif req.raw is not None:  # the client's own bytes, nothing to change in them
            return req.raw
        return orjson.dumps(body)

    # --- the call ------------------------------------------------------------------------------------
    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        if req.native is not None:
            return await self._send_responses(req)
        resp, first_byte, total, deadline = await self._post(req, self.url(req), self.encode(req))
        out_headers = upstream_headers(resp)
        if req.stream and resp.status == 200:
            return UpstreamResponse(
                status=200,
                headers=out_headers,
                events=self._events(resp, first_byte, deadline),
                close=_closer(resp),
            )
        body = read_whole(resp, self)
        if body is None:
            body = await timed_read(resp, self.name, deadline, total)
        return UpstreamResponse(resp.status, out_headers, body)  # (status, headers, body) by position

    async def _send_responses(self, req: UpstreamRequest) -> UpstreamResponse:
        """The lossless path: the client's Responses body to /responses; its answer read back to chat too."""
        assert req.native is not None
        payload = {**req.native, "model": req.body.get("model"), "stream": req.stream}
        resp, first_byte, total, deadline = await self._post(req, self._base + "/responses", orjson.dumps(payload))
        out_headers = upstream_headers(resp)
        native = NativeAnswer() if resp.status == 200 else None
        if req.stream and native is not None:
            reader = EventsToChunks(bool((req.body.get("stream_options") or {}).get("include_usage")))
            events = self._responses_events(resp, reader, native, first_byte, deadline)
            return UpstreamResponse(status=200, headers=out_headers, events=events, close=_closer(resp),
                                    native=native)
        body = await timed_read(resp, self.name, deadline, total)
        if native is None:
            return UpstreamResponse(status=resp.status, headers=out_headers, body=body)
        try:
            answer = orjson.loads(body)
            native.body, native.final = body, answer
            return UpstreamResponse(status=200, headers=out_headers, body=orjson.dumps(response_to_chat(answer)),
                                    native=native)
        except (ValueError, TypeError, AttributeError) as exc:
            raise UpstreamError("protocol", f"{self.name} sent a malformed response") from exc

    async def _responses_events(self, resp: aiohttp.ClientResponse, reader: EventsToChunks, native: NativeAnswer,
                                idle_s: float, deadline: float) -> AsyncIterator[bytes]:
        async with aclosing(timed_sse(resp, self.name, idle_s, deadline)) as events:
            async for event, data in events:
                native.frames.append((b"event: " + event + b"\n" if event else b"") + b"data: " + data + b"\n\n")
                try:
                    parsed = orjson.loads(data)
                    chunks = reader.feed(str(parsed.get("type") or (event or b"").decode()), parsed)
                except (ValueError, TypeError, AttributeError) as exc:
                    raise UpstreamError("protocol", f"{self.name} sent a malformed stream event") from exc
                except StreamFailed as exc:
                    raise UpstreamError("stream_cut", f"{self.name} stream failed: {exc}") from None
                for chunk in chunks:
                    yield orjson.dumps(chunk)
                if reader.done:
                    native.final = reader.final
                    exchange.release_when_done(resp)
                    return
        raise UpstreamError("stream_cut", f"{self.name} ended the stream before response.completed")

    async def _events(
        self, resp: aiohttp.ClientResponse, idle_s: float, deadline: float
    ) -> AsyncIterator[bytes]:
        field = self._usage_field.encode()
        async with aclosing(timed_sse(resp, self.name, idle_s, deadline)) as events:
            async for _event, data in events:
                if data == DONE:
                    exchange.release_when_done(resp)  # its terminator may still be on the way
                    return
                yield usage_moved(data, self._usage_field) if field and field in data else data
        raise UpstreamError("stream_cut", f"{self.name} ended the stream without [DONE]")


def compatible_body(body: dict, drop: tuple[str, ...], rename: bool) -> dict:
    """The request for a server with quirks: fields it refuses left out, ``max_completion_tokens`` renamed."""
    out = {k: v for k, v in body.items() if k not in drop}
    if rename and "max_completion_tokens" in out:
        value = out.pop("max_completion_tokens")
        out.setdefault("max_tokens", value)
    return out


def usage_moved(data: bytes, field: str) -> bytes:
    """A chunk whose usage rides in ``field`` (e.g. Groq's ``x_groq.usage``) with it at ``usage`` instead."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    extra = chunk.get(field) if isinstance(chunk, dict) else None
    if not isinstance(extra, dict) or not isinstance(extra.get("usage"), dict) or chunk.get("usage"):
        return data
    chunk["usage"] = extra["usage"]
    return orjson.dumps(chunk)


# --- shared by the HTTP adapters (openai, azure_openai, anthropic) -----------------------------------
def new_session(spec: ProviderSpec) -> aiohttp.ClientSession:
    """A pooled keep-alive session; only connect has a session-wide timeout, the rest is per call."""
    t = spec.timeouts
    connector = (TimedConnector if HOOKED else aiohttp.TCPConnector)(
        limit=spec.max_connections, keepalive_timeout=30, enable_cleanup_closed=True
    )
    return aiohttp.ClientSession(
        connector=connector,
        # aiohttp's ``connect`` would include the pool wait: the attempt's PoolTimer bounds that instead
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, connect=None),
        trace_configs=None if HOOKED else [pool_trace()],
        auto_decompress=True,
        # as ``exchange``: one session serves every tenant, so an upstream's cookies are not kept
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def attempt_timeouts(spec: ProviderSpec, req: UpstreamRequest) -> tuple[float, float]:
    """``(first_byte_s, total_s)`` for one attempt: the request's overrides win over the provider's."""
    t = spec.timeouts
    return req.first_byte_timeout_s or t.first_byte_s, req.total_timeout_s or t.total_s


_PLANS: dict[tuple[str, ...], tuple[tuple[int, str], ...]] = {}  # an answer's header names -> ``_plan``


def _plan(names: tuple[str, ...]) -> tuple[tuple[int, str], ...]:
    """``(position, lower-cased name)`` of the headers among ``names`` worth passing on, in order."""
    if len(_PLANS) >= 256:  # names an upstream makes up (request ids in a name): bounded
        _PLANS.clear()
    plan = _PLANS[names] = tuple((i, low) for i, name in enumerate(names) if (low := name.lower()) not in HOP_BY_HOP)
    return plan


def upstream_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """Response headers worth passing on (retry-after, rate-limit info), lower-cased (the verdict on a set
    of names memoised: an upstream sends the same names on every answer, most of them hop-by-hop)."""
    headers = resp.headers
    names = tuple(headers.keys())  # (a name sent twice is one key: then each header is read in turn)
    out: dict[str, str] = {}
    if len(names) != len(headers):
        for name, value in headers.items():
            if (low := name.lower()) not in HOP_BY_HOP:
                out[low] = value
        return out
    plan = _PLANS.get(names)
    if plan is None:
        plan = _plan(names)
    if plan:
        values = tuple(headers.values())
        for i, low in plan:
            out[low] = values[i]
    return out


async def timed_post(
    session: aiohttp.ClientSession,
    name: str,
    url: str,
    data: bytes,
    headers: dict[str, str],
    first_byte: float,
    total: float,
    target: exchange.Target | None = None,
) -> exchange.Exchange | aiohttp.ClientResponse:
    """POST and wait for the response headers; transport failures become ``UpstreamError``. (Without
    the pool-wait bound of ``HTTPProvider._post``: for adapters that sign each request themselves.)
    With ``target`` (``url``'s, see ``HTTPProvider._target``) the POST is ``exchange.post``."""
    try:
        async with asyncio.timeout(min(first_byte, total)):
            if target is not None:
                return await exchange.post(session.connector, session.timeout, target,  # type: ignore[arg-type]
                                           headers, data)
            return await session.post(url, data=data, headers=headers, allow_redirects=False)
    except TimeoutError as exc:
        raise UpstreamError("timeout", f"no response from {name} within {first_byte:g}s") from exc
    except (aiohttp.ClientConnectionError, OSError) as exc:
        raise UpstreamError("connect", f"cannot reach {name}: {type(exc).__name__}") from exc
    except aiohttp.ClientResponseError as exc:
        raise UpstreamError("protocol", f"{name} sent an answer that is not valid HTTP") from exc


def read_whole(resp: exchange.Exchange | aiohttp.ClientResponse, provider: Provider) -> bytes | None:
    """The body of an answer (an ``exchange.Exchange``) that came whole with its head, as most do, read
    with nothing awaited (its connection went back to the pool when the body ended); None when more is
    to come (``timed_read``). (``provider``: its name is read only for an error.)"""
    content = resp.content
    if type(resp) is not exchange.Exchange or not content.is_eof():
        return None
    try:
        return content.read_nowait()  # what ``read`` returns (or raises) once the body is in
    except (aiohttp.ClientError, OSError) as exc:
        resp.close()
        raise UpstreamError("stream_cut", f"{provider.name} closed the connection mid-answer") from exc


async def timed_read(resp: aiohttp.ClientResponse, name: str, deadline: float, total: float) -> bytes:
    """Read a whole body before the attempt's deadline, then give the connection back to the pool.

    A body that came whole with the headers (most answers) is read without a timer: nothing to wait
    for, and a timer costs ~4 us of CPU per call."""
    try:
        if resp.content.is_eof():
            body = await resp.read()
        else:
            async with asyncio.timeout(max(0.001, deadline - asyncio.get_running_loop().time())):
                body = await resp.read()
    except TimeoutError as exc:
        resp.close()
        raise UpstreamError("timeout", f"{name} did not finish within {total:g}s") from exc
    except (aiohttp.ClientError, OSError) as exc:
        resp.close()
        raise UpstreamError("stream_cut", f"{name} closed the connection mid-answer") from exc
    resp.release()
    return body


def stall_message(name: str, idle_s: float, left_s: float) -> str:
    """Why a stream read timed out: the whole answer's deadline (``total_s``), or a silent upstream."""
    if left_s <= 0.01:
        return f"{name} stream cut: the answer exceeded timeouts.total_s"
    return f"{name} stream stalled: nothing for {idle_s:g}s (timeouts.first_byte_s)"


async def timed_sse(
    resp: aiohttp.ClientResponse, name: str, idle_s: float, deadline: float
) -> AsyncIterator[tuple[bytes | None, bytes]]:
    """SSE ``(event, data)`` pairs; each read waits at most ``idle_s`` so a stalled stream is cut.

    Ends quietly when the upstream closes: whether that is a cut depends on the wire format.
    Releases the connection (or closes it, if unread bytes remain) however it ends. One ``Watchdog``
    bounds every read (a timer per read cost ~4-8 us of CPU per event).
    """
    dog = Watchdog(idle_s, deadline)
    it = iter_sse(resp.content).__aiter__()
    try:
        while True:
            dog.enter()
            try:
                item = await it.__anext__()
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if dog.expired():
                    raise UpstreamError("timeout", stall_message(name, idle_s, deadline - dog.loop.time())) from None
                raise
            except (aiohttp.ClientError, OSError) as exc:
                raise UpstreamError("stream_cut", f"{name} stream broke: {type(exc).__name__}") from exc
            dog.since = 0.0
            yield item
    finally:
        dog.close()
        resp.close() if not resp.content.at_eof() else resp.release()


def _closer(resp: aiohttp.ClientResponse):  # noqa: ANN202
    async def close() -> None:
        if not resp.closed:
            resp.close()

    return close


closer = _closer  # public name for the other adapters
