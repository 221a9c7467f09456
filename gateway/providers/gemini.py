"""Google Gemini (AI Studio) behind the OpenAI chat and embeddings interface.

``POST {base}/v1beta/models/{model}:generateContent`` (whole answers), ``:streamGenerateContent?alt=sse``
(streams) and ``:batchEmbedContents`` (embeddings), with the key in ``x-goog-api-key``. Requests and
answers are translated by ``gemini_translate``/``gemini_answer``/``gemini_stream``; ``vertex`` reuses
all of it and changes only the URLs, the auth header and the embeddings call (the hooks below).
Google error bodies become OpenAI error bodies with the same status (429 stays 429, so failover and
retries apply); legacy completions get a local 400.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError, UpstreamError, invalid
from gateway.policy.model import ProviderSpec
from gateway.providers import gemini_answer as answers
from gateway.providers.base import UpstreamRequest, UpstreamResponse, local_error
from gateway.providers.gemini_stream import StreamFailed, StreamTranslator
from gateway.providers.gemini_translate import batch_embed_request, embedding_inputs, to_gemini
from gateway.providers.openai import HTTPProvider, closer, timed_read, timed_sse, upstream_headers

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
_BAD_SHAPE = (KeyError, TypeError, AttributeError, ValueError, IndexError)
VectorReader = Callable[[dict[str, Any]], tuple[list[list[float]], int | None]]


class GeminiProvider(HTTPProvider):
    type = "gemini"

    def __init__(self, spec: ProviderSpec, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(spec)
        self._clock = clock
        self._base = (spec.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._static_headers = {"content-type": "application/json", **dict(spec.headers)}

    def key_headers(self) -> dict[str, str]:
        key = self.key.current()
        return {"x-goog-api-key": key} if key else {}

    # --- hooks for vertex ----------------------------------------------------------------------------
    async def model_url(self, model: str, method: str) -> str:
        return f"{self._base}/v1beta/models/{quote(model, safe='')}:{method}"

    async def auth_headers(self) -> dict[str, str]:
        """Per-call auth headers (the API key is static; Vertex adds its cached bearer token)."""
        return {}

    async def embed_call(self, body: dict[str, Any], model: str) -> tuple[str, dict[str, Any], VectorReader]:
        """``(url, payload, vector reader)`` of an embeddings call."""
        payload = batch_embed_request(body, f"models/{model}")
        return await self.model_url(model, "batchEmbedContents"), payload, answers.batch_embed_vectors

    # --- the call ------------------------------------------------------------------------------------
    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        if req.endpoint == "completions":
            message = f"the completions endpoint is not supported by {self.name} ({self.type})"
            return local_error(invalid(message, code="unsupported_endpoint"))
        model = str(req.body.get("model") or "").removeprefix("models/")
        if not model:
            return local_error(invalid(f"{self.name}: the request has no model", param="model"))
        reader: VectorReader = answers.batch_embed_vectors
        try:
            if req.endpoint == "embeddings":
                url, payload, reader = await self.embed_call(req.body, model)
            else:
                method = "streamGenerateContent?alt=sse" if req.stream else "generateContent"
                url, payload = await self.model_url(model, method), to_gemini(req.body)
        except GatewayError as exc:
            return local_error(exc)
        auth = await self.auth_headers()
        call = replace(req, headers={**req.headers, **auth}) if auth else req
        resp, first_byte, total, deadline = await self._post(call, url, orjson.dumps(payload))
        headers = upstream_headers(resp)
        if req.stream and resp.status == 200 and req.endpoint == "chat":
            include_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
            translator = StreamTranslator(model, self._response_id(req), int(self._clock.time()), include_usage)
            events = self._events(resp, translator, first_byte, deadline)
            return UpstreamResponse(status=200, headers=headers, events=events, close=closer(resp))
        body = await timed_read(resp, self.name, deadline, total)
        if not 200 <= resp.status < 300:
            out, extra = answers.error_body(resp.status, body, self.name, *self.key.secrets())
            return UpstreamResponse(resp.status, {**extra, **headers}, out)
        try:
            parsed = orjson.loads(body)
            if req.endpoint == "embeddings":
                return UpstreamResponse(200, headers, self._embeddings(parsed, reader, req.body, model))
            blocked = answers.blocked_prompt(parsed)
            if blocked is not None:
                return local_error(blocked)
            out = answers.from_gemini(parsed, model, self._response_id(req), int(self._clock.time()))
        except _BAD_SHAPE as exc:
            raise UpstreamError("protocol", f"{self.name} sent a malformed answer: {type(exc).__name__}") from exc
        return UpstreamResponse(200, headers, orjson.dumps(out))

    @staticmethod
    def _response_id(req: UpstreamRequest) -> str:
        return f"chatcmpl-{req.request_id}"

    @staticmethod
    def _embeddings(parsed: dict[str, Any], reader: VectorReader, body: dict[str, Any], model: str) -> bytes:
        vectors, tokens = reader(parsed)
        out = answers.embeddings(vectors, model, embedding_inputs(body), tokens)
        if body.get("encoding_format") == "base64":
            for item in out["data"]:
                vec = item["embedding"]
                item["embedding"] = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        return orjson.dumps(out)

    def _redact(self, text: str) -> str:
        for secret in self.key.secrets():
            text = text.replace(secret, "[redacted]")
        return text

    async def _events(self, resp: aiohttp.ClientResponse, translator: StreamTranslator, idle_s: float,
                      deadline: float) -> AsyncIterator[bytes]:
        async with aclosing(timed_sse(resp, self.name, idle_s, deadline)) as events:
            async for _event, data in events:
                try:
                    chunks = translator.feed(orjson.loads(data))
                except StreamFailed as exc:
                    raise UpstreamError("stream_cut", f"{self.name} stream failed: {self._redact(str(exc))}") from None
                except _BAD_SHAPE as exc:
                    raise UpstreamError("protocol", f"{self.name} sent a malformed stream event") from exc
                for chunk in chunks:
                    yield orjson.dumps(chunk)
        if not translator.finished:
            raise UpstreamError("stream_cut", f"{self.name} ended the stream before a finishReason")
        for chunk in translator.end():
            yield orjson.dumps(chunk)

