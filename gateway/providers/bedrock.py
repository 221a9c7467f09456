"""Amazon Bedrock Runtime behind the OpenAI interface: Converse, ConverseStream and InvokeModel embeddings.

Chat goes to ``POST {base}/model/{modelId}/converse`` (``/converse-stream`` when streamed: an AWS
binary event stream, ``bedrock_stream``); embeddings to ``/model/{modelId}/invoke`` for Titan and
Cohere models (``bedrock_embed``). The model id is percent-encoded into the path (``:`` becomes
``%3A``), signed with SigV4 over exactly that path and sent without re-encoding (``exchange.post``
with an encoded ``Target``, or ``session.post`` on an aiohttp without its hooks). Credentials come
from the AWS chain (``aws_sigv4``), resolved and refreshed off the event loop; a policy ``api_key`` is a
Bedrock API key, sent as a bearer token instead. Errors are mapped by
AWS error type (``bedrock_errors``): throttling is a 429 wherever it comes from, so it fails over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError, UpstreamError, invalid
from gateway.policy.checkers import string
from gateway.policy.model import ProviderSpec
from gateway.providers import bedrock_embed as embed
from gateway.providers import exchange
from gateway.providers.aws_sigv4 import AwsCredentials, AwsUnavailable, sign
from gateway.providers.base import UpstreamRequest, UpstreamResponse, local_error
from gateway.providers.bedrock_errors import ERRORS, translate_error
from gateway.providers.bedrock_stream import StreamFailed, StreamTranslator, frame_event, timed_frames
from gateway.providers.bedrock_translate import from_converse, to_converse
from gateway.providers.openai import (
    LEAN,
    USER_AGENT,
    HTTPProvider,
    attempt_timeouts,
    closer,
    timed_post,
    timed_read,
    upstream_headers,
)

_BAD_SHAPE = (KeyError, TypeError, AttributeError, ValueError)  # orjson.JSONDecodeError is a ValueError
EMBED_CONCURRENCY = 8  # InvokeModel calls in flight for one embeddings request (Titan: one per input)


@dataclass(frozen=True, slots=True)
class BedrockOptions:
    region: str = ""  # required: signs every request and names the default endpoint
    profile: str = ""  # a shared config/credentials profile; empty: the default chain


OPTION_KEYS = {"region": string(nonempty=True), "profile": string(nonempty=True)}


class BedrockProvider(HTTPProvider):
    type = "bedrock"
    signed_paths = True  # the model id is percent-encoded in the path, and SigV4 signs that path

    def __init__(self, spec: ProviderSpec, clock: Clock = SYSTEM_CLOCK,
                 credentials: AwsCredentials | None = None) -> None:
        super().__init__(spec)
        options = spec.options if isinstance(spec.options, BedrockOptions) else BedrockOptions()
        if not options.region:
            raise ValueError(f"providers.{spec.name}.region: required for type bedrock (e.g. us-east-1)")
        self.region = options.region
        self._base = (spec.base_url or f"https://bedrock-runtime.{self.region}.amazonaws.com").rstrip("/")
        self._clock = clock
        self._credentials = credentials or AwsCredentials(options.profile or None)
        self._static_headers = dict(spec.headers)

    async def close(self) -> None:
        await self._credentials.close()
        await super().close()

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        model = str(req.body.get("model") or "")
        try:
            if not model:
                raise invalid(f"{self.name}: no Bedrock model id (the deployment has no model)", param="model")
            if req.endpoint == "embeddings":
                return await self._embed(req, model)
            if req.endpoint != "chat":
                raise invalid(f"the {req.endpoint} endpoint is not supported by {self.name} (bedrock)",
                              code="unsupported_endpoint")
            payload = orjson.dumps(to_converse(req.body))
        except GatewayError as exc:
            return local_error(exc)
        action = "converse-stream" if req.stream else "converse"
        resp, first_byte, total, deadline = await self._call(req, model, action, payload)
        out_headers = upstream_headers(resp)
        if resp.status != 200:
            return await self._error(resp, model, deadline, total)
        response_id = f"chatcmpl-{resp.headers.get('x-amzn-requestid') or req.request_id}"
        created = int(self._clock.time())
        if req.stream:
            include_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
            translator = StreamTranslator(response_id, model, created, include_usage)
            return UpstreamResponse(status=200, headers=out_headers, close=closer(resp),
                                    events=self._events(resp, translator, first_byte, deadline))
        body = await timed_read(resp, self.name, deadline, total)
        try:
            answer = from_converse(orjson.loads(body), model, created, response_id)
        except _BAD_SHAPE as exc:
            raise UpstreamError("protocol", f"{self.name} sent a malformed answer: {type(exc).__name__}") from exc
        return UpstreamResponse(status=200, headers=out_headers, body=orjson.dumps(answer))

    # --- the signed call -----------------------------------------------------------------------------
    def url(self, model: str, action: str) -> str:
        """The request URL as sent and signed: the model id percent-encoded as one path segment."""
        return f"{self._base}/model/{quote(model, safe='')}/{action}"

    async def _call(self, req: UpstreamRequest, model: str, action: str,
                    body: bytes) -> tuple[exchange.Exchange | aiohttp.ClientResponse, float, float, float]:
        """Sign and POST one attempt; ``(response, first_byte_s, total_s, deadline)``."""
        if self._session is None:
            await self.start()
        session = self._session
        assert session is not None
        url = self.url(model, action)
        accept = "application/vnd.amazon.eventstream" if action == "converse-stream" else "application/json"
        headers = {"user-agent": USER_AGENT, **self._static_headers, **req.headers,
                   "content-type": "application/json", "accept": accept}
        if LEAN:  # the exchange writes these itself: signing a value it does not send would break the signature
            headers = {k: v for k, v in headers.items() if k.lower() not in exchange.OWNED}
        if key := self.key.current():  # a Bedrock API key: a bearer token instead of SigV4
            headers["authorization"] = f"Bearer {key}"
        else:
            headers = sign(await self._signing_credentials(), self.region, url, body, headers)
        first_byte, total = attempt_timeouts(self.spec, req)
        deadline = asyncio.get_running_loop().time() + total
        if LEAN:  # the path goes out as signed: the target is built with ``signed_paths``
            resp = await timed_post(session, self.name, url, body, headers, first_byte, total,
                                    self._targets.get(url) or self._target(url))
        else:
            # encoded=True: yarl would otherwise decode %3A back to ':' and the path would not match the signature
            resp = await timed_post(session, self.name, URL(url, encoded=True), body, headers,  # type: ignore[arg-type]
                                    first_byte, total)
        return resp, first_byte, total, deadline

    async def _signing_credentials(self) -> Any:
        try:
            return await self._credentials.get()
        except AwsUnavailable as exc:
            raise UpstreamError("connect", f"{self.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - botocore's chain raises many types (STS, files, metadata)
            raise UpstreamError("connect", f"{self.name}: AWS credentials failed: {type(exc).__name__}") from exc

    async def _error(self, resp: aiohttp.ClientResponse, model: str, deadline: float,
                     total: float) -> UpstreamResponse:
        raw = await timed_read(resp, self.name, deadline, total)
        headers = upstream_headers(resp)
        status, body = translate_error(resp.status, headers, raw, model, self.name)
        return UpstreamResponse(status=status, headers=headers, body=body)

    async def _events(self, resp: aiohttp.ClientResponse, translator: StreamTranslator, idle_s: float,
                      deadline: float) -> AsyncIterator[bytes]:
        async with aclosing(timed_frames(resp, self.name, idle_s, deadline)) as frames:
            async for headers, payload in frames:
                try:
                    chunks = translator.feed(*frame_event(headers, payload))
                except StreamFailed as exc:
                    kind = "429" if ERRORS.get(exc.kind, (0, ""))[0] == 429 else "stream_cut"
                    raise UpstreamError(kind, f"{self.name} stream failed: {exc}") from None
                except _BAD_SHAPE as exc:
                    raise UpstreamError("protocol", f"{self.name} sent a malformed stream event") from exc
                for chunk in chunks:
                    yield orjson.dumps(chunk)
                if translator.done:
                    exchange.release_when_done(resp)  # back to the pool once the body's end arrives
                    return
        if not translator.stopped:
            raise UpstreamError("stream_cut", f"{self.name} ended the stream before messageStop")

    # --- embeddings ------------------------------------------------------------------------------------
    async def _embed(self, req: UpstreamRequest, model: str) -> UpstreamResponse:
        kind = embed.family(model)
        if kind is None:
            raise invalid(f"{self.name}: '{model}' is not a Titan or Cohere embedding model", param="model")
        bodies = embed.requests(kind, req.body)
        gate = asyncio.Semaphore(EMBED_CONCURRENCY)

        async def one(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
            async with gate:
                resp, _first_byte, total, deadline = await self._call(req, model, "invoke", orjson.dumps(body))
                if resp.status != 200:
                    error = await self._error(resp, model, deadline, total)
                    return error.status, error.headers, error.body or b""
                return 200, upstream_headers(resp), await timed_read(resp, self.name, deadline, total)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(body)) for body in bodies]
        except BaseExceptionGroup as failed:  # the first transport failure, as the other adapters raise it
            first = next((e for e in failed.exceptions if isinstance(e, UpstreamError)), None)
            if first is None:
                raise
            raise first from None
        results = [t.result() for t in tasks]
        for status, headers, body in results:
            if status != 200:
                return UpstreamResponse(status=status, headers=headers, body=body)
        vectors: list[list[float]] = []
        tokens = 0
        try:
            for _status, headers, body in results:
                answer = orjson.loads(body)
                vectors.extend(embed.vectors(kind, answer))
                tokens += embed.token_count(kind, headers, answer)
        except _BAD_SHAPE as exc:
            raise UpstreamError("protocol", f"{self.name} sent a malformed embedding") from exc
        out = embed.answer(model, vectors, tokens, req.body.get("encoding_format") == "base64")
        return UpstreamResponse(status=200, headers=results[0][1], body=orjson.dumps(out))
