"""A loopback Gemini API (AI Studio and Vertex AI paths) and a Google OAuth2 token endpoint.

Speaks the REST wire format: ``POST /v1beta/models/{model}:generateContent`` (checks
``x-goog-api-key``) and ``/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:...`` (checks
``Authorization: Bearer`` against the tokens it minted), ``:streamGenerateContent?alt=sse`` as
``data: {GenerateContentResponse}`` events with no end marker, ``:batchEmbedContents``, Vertex's
``:predict``, and Google error bodies ``{"error": {"code", "message", "status"}}``.

``POST /token`` is a service-account token endpoint: it verifies the RS256 JWT assertion google-auth
signs with the test key (``service_account_file``) and answers an access token living ``token_ttl_s``.

    server.push(Reply(calls=[("get_weather", {"city": "Paris"})]), ErrorReply.exhausted())

Unscripted requests get ``Mock answer to: <last user text>``; usage counts words.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web

from tests.support.loopback import LoopbackServer


@dataclass
class Reply:
    text: str | None = None  # None: the echo answer
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # functionCall parts
    signature: str | None = None  # thoughtSignature on each functionCall part (thinking models)
    finish: str = "STOP"
    block_reason: str | None = None  # promptFeedback.blockReason and no candidates
    thoughts: int = 0  # thoughtsTokenCount
    cached: int = 0  # cachedContentTokenCount
    chunk_chars: int = 5
    cut_after: int | None = None  # stream: stop after this many events...
    cut: Literal["abort", "eof"] = "abort"  # ...by resetting the connection or ending it cleanly
    error_event_after: int | None = None  # stream: send an error object after this many events
    delay_s: float = 0.0


@dataclass
class ErrorReply:
    status: int
    status_name: str
    message: str
    retry_delay: str | None = None

    @classmethod
    def exhausted(cls) -> ErrorReply:
        return cls(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", "7s")

    @classmethod
    def internal(cls) -> ErrorReply:
        return cls(500, "INTERNAL", "An internal error has occurred.")

    def body(self) -> bytes:
        err: dict[str, Any] = {"code": self.status, "message": self.message, "status": self.status_name}
        if self.retry_delay:
            err["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": self.retry_delay}]
        return orjson.dumps({"error": err})


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class MockGemini(LoopbackServer):
    def __init__(self, api_key: str = "gemini-mock-key", token_ttl_s: int = 3600) -> None:
        super().__init__()
        self.api_key = api_key
        self.token_ttl_s = token_ttl_s
        self.token_delay_s = 0.0  # slow token endpoint (proves requests don't wait for refreshes)
        self.token_fail = False
        self.requests: list[Any] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.tokens: dict[str, float] = {}  # minted token -> expiry (monotonic)
        self.token_requests = 0
        self.script: deque[Reply | ErrorReply] = deque()
        self._key_pem: bytes | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, *replies: Reply | ErrorReply) -> None:
        self.script.extend(replies)

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1beta/models/{tail}", self._gemini)
        app.router.add_post("/v1/projects/{project}/locations/{location}/publishers/google/models/{tail}",
                            self._vertex)
        app.router.add_post("/token", self._token)
        return app


    # --- service account ---------------------------------------------------------------------------
    def service_account_file(self, folder: Path, project: str = "test-project") -> Path:
        """A service-account JSON with a fresh RSA key whose ``token_uri`` is this server's /token."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
        info = {"type": "service_account", "project_id": project, "private_key_id": "test-key-1",
                "private_key": self._key_pem.decode(), "client_email": f"gw@{project}.iam.gserviceaccount.com",
                "client_id": "1", "token_uri": f"{self.url}/token"}
        path = folder / "service-account.json"
        path.write_text(json.dumps(info))
        return path

    def _verify(self, assertion: str) -> bool:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        if self._key_pem is None:
            return False
        head, payload, sig = assertion.split(".")
        key = serialization.load_pem_private_key(self._key_pem, password=None).public_key()
        try:
            key.verify(_b64url_decode(sig), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            return False
        claims = json.loads(_b64url_decode(payload))
        return claims.get("aud", "").endswith("/token") and claims.get("exp", 0) > time.time()

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s)
        if self.token_fail or form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" \
                or not self._verify(str(form.get("assertion", ""))):
            return web.json_response({"error": "invalid_grant", "error_description": "bad assertion"}, status=400)
        token = f"ya29.mock-{self.token_requests}"
        self.tokens[token] = time.monotonic() + self.token_ttl_s
        return web.json_response({"access_token": token, "expires_in": self.token_ttl_s, "token_type": "Bearer"})

    # --- the API -----------------------------------------------------------------------------------
    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-goog-api-key") != self.api_key:
            return self._error(ErrorReply(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."))
        return await self._serve(request)

    async def _vertex(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or self.tokens.get(token, 0) < time.monotonic():
            return self._error(ErrorReply(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."))
        return await self._serve(request)

    def _error(self, err: ErrorReply) -> web.Response:
        return web.Response(status=err.status, body=err.body(), content_type="application/json")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.paths.append(request.path_qs)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        model, _, method = request.match_info["tail"].partition(":")
        if method == "batchEmbedContents":
            vectors = [self._vector(r["content"]["parts"][0]["text"], r.get("outputDimensionality"))
                       for r in body["requests"]]
            return web.json_response({"embeddings": [{"values": v} for v in vectors]})
        if method == "predict":
            dims = (body.get("parameters") or {}).get("outputDimensionality")
            preds = [{"embeddings": {"values": self._vector(i["content"], dims),
                                     "statistics": {"token_count": len(i["content"].split()), "truncated": False}}}
                     for i in body["instances"]]
            return web.json_response({"predictions": preds})
        reply = self.script.popleft() if self.script else Reply()
        if isinstance(reply, ErrorReply):
            return self._error(reply)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if method == "generateContent":
            return web.json_response(self._answer(body, model, reply))
        if method == "streamGenerateContent" and request.query.get("alt") == "sse":
            return await self._stream(request, body, model, reply)
        return self._error(ErrorReply(404, "NOT_FOUND", f"method {method} not found"))

    @staticmethod
    def _vector(text: str, dims: int | None) -> list[float]:
        n = dims or 8
        return [round(((len(text) * (i + 1)) % 17) / 17.0, 4) for i in range(n)]

    @staticmethod
    def _text_of(body: dict[str, Any]) -> str:
        for content in reversed(body.get("contents") or []):
            texts = [p["text"] for p in content["parts"] if "text" in p]
            if content.get("role") == "user" and texts:
                return " ".join(texts)
        return ""

    def _usage(self, body: dict[str, Any], text: str, reply: Reply) -> dict[str, int]:
        words = sum(len(str(p.get("text", "")).split()) for c in body.get("contents") or [] for p in c["parts"])
        prompt, out = max(1, words), len(text.split()) + 3 * len(reply.calls)
        return {"promptTokenCount": prompt, "candidatesTokenCount": out, "cachedContentTokenCount": reply.cached,
                "thoughtsTokenCount": reply.thoughts, "totalTokenCount": prompt + out + reply.thoughts}

    def _answer_text(self, body: dict[str, Any], reply: Reply) -> str:
        if reply.text is not None:
            return reply.text
        return "" if reply.calls else f"Mock answer to: {self._text_of(body)}"

    def _answer(self, body: dict[str, Any], model: str, reply: Reply) -> dict[str, Any]:
        text = self._answer_text(body, reply)
        out: dict[str, Any] = {"modelVersion": model, "responseId": "resp-mock-1",
                               "usageMetadata": self._usage(body, text, reply)}
        if reply.block_reason:
            out["promptFeedback"] = {"blockReason": reply.block_reason}
            return out
        parts: list[dict[str, Any]] = [{"text": text}] if text else []
        parts += self._call_parts(reply)
        if reply.thoughts:
            parts.insert(0, {"text": "thinking...", "thought": True})
        out["candidates"] = [{"content": {"role": "model", "parts": parts}, "finishReason": reply.finish,
                              "index": 0, "safetyRatings": []}]
        return out

    @staticmethod
    def _call_parts(reply: Reply) -> list[dict[str, Any]]:
        sig = {"thoughtSignature": reply.signature} if reply.signature else {}
        return [{"functionCall": {"name": n, "args": a}, **sig} for n, a in reply.calls]

    async def _stream(self, request: web.Request, body: dict[str, Any], model: str,
                      reply: Reply) -> web.StreamResponse:
        text = self._answer_text(body, reply)
        whole = self._answer(body, model, reply)
        events: list[dict[str, Any]] = []
        if reply.block_reason:
            events.append(whole)
        else:
            step = reply.chunk_chars
            pieces = [text[i:i + step] for i in range(0, len(text), step)]
            for piece in pieces:
                events.append({"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]},
                                               "index": 0}], "modelVersion": model})
            last = {"candidates": [{"content": {"role": "model", "parts": self._call_parts(reply)},
                                    "finishReason": reply.finish, "index": 0}],
                    "usageMetadata": whole["usageMetadata"], "modelVersion": model}
            events.append(last)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for n, event in enumerate(events):
            if reply.error_event_after is not None and n == reply.error_event_after:
                await resp.write(b"data: " + ErrorReply.internal().body() + b"\r\n\r\n")
                break
            if reply.cut_after is not None and n == reply.cut_after:
                if reply.cut == "abort" and request.transport is not None:
                    request.transport.abort()
                return resp
            await resp.write(b"data: " + orjson.dumps(event) + b"\r\n\r\n")
        await resp.write_eof()
        return resp
