"""The built-in mock provider: deterministic OpenAI-shaped answers with no network.

For demos, load tests and CI. ``latency_ms`` delays the first byte, ``stream_chunk_ms`` paces stream
chunks, ``failure_rate`` makes that share of calls fail with a 503 (drawn from an injectable RNG).
The answer echoes the last user message, so identical requests give identical answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from gateway.policy.checkers import number
from gateway.policy.model import ProviderSpec
from gateway.providers.base import Provider, UpstreamRequest, UpstreamResponse
from gateway.tokens import prompt_tokens, text_tokens

EMBEDDING_DIM = 16


@dataclass(frozen=True, slots=True)
class MockOptions:
    latency_ms: float = 0.0  # delay before the first byte
    failure_rate: float = 0.0  # share of calls answered 503
    stream_chunk_ms: float = 0.0  # pause between stream chunks


OPTION_KEYS = {"latency_ms": number(ge=0), "failure_rate": number(ge=0, le=1), "stream_chunk_ms": number(ge=0)}


def _last_user_text(body: dict) -> str:
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def answer_text(body: dict, endpoint: str) -> str:
    """The deterministic answer for a request, trimmed to ``max_tokens`` words-ish."""
    source = _last_user_text(body) if endpoint == "chat" else str(body.get("prompt", ""))
    text = f"Mock answer to: {source[:200]}"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and limit > 0:
        text = text[: limit * 4]
    return text


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((b - 128) / 128.0, 6) for b in digest[:EMBEDDING_DIM]]


class MockProvider(Provider):
    type = "mock"

    def __init__(self, spec: ProviderSpec, rng: random.Random | None = None) -> None:
        super().__init__(spec)
        self.options = spec.options if isinstance(spec.options, MockOptions) else MockOptions()
        self._rng = rng or random.Random(0)
        self.calls = 0

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        self.calls += 1
        if self.options.latency_ms:
            await asyncio.sleep(self.options.latency_ms / 1000.0)
        if self.options.failure_rate and self._rng.random() < self.options.failure_rate:
            body = {"error": {"message": "mock failure", "type": "server_error", "param": None, "code": None}}
            return UpstreamResponse(status=503, headers={"retry-after": "1"}, body=orjson.dumps(body))
        if req.endpoint == "embeddings":
            return UpstreamResponse(status=200, headers={}, body=orjson.dumps(self._embeddings(req.body)))
        text = answer_text(req.body, req.endpoint)
        usage = {
            "prompt_tokens": prompt_tokens(req.endpoint, req.body),
            "completion_tokens": text_tokens(text),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if req.stream:
            return UpstreamResponse(status=200, headers={}, events=self._stream(req, text, usage))
        return UpstreamResponse(status=200, headers={}, body=orjson.dumps(self._whole(req, text, usage)))

    def _whole(self, req: UpstreamRequest, text: str, usage: dict) -> dict:
        base = {"id": f"mock-{req.request_id}", "created": int(time.time()), "model": req.body.get("model")}
        if req.endpoint == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            return {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        return {**base, "object": "text_completion", "choices": [choice], "usage": usage}

    async def _stream(self, req: UpstreamRequest, text: str, usage: dict) -> AsyncIterator[bytes]:
        chat = req.endpoint == "chat"
        base = {
            "id": f"mock-{req.request_id}",
            "created": int(time.time()),
            "model": req.body.get("model"),
            "object": "chat.completion.chunk" if chat else "text_completion",
        }
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            if chat:
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                choice = {"index": 0, "delta": delta, "finish_reason": None}
            else:
                choice = {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}
            yield orjson.dumps({**base, "choices": [choice]})
            if self.options.stream_chunk_ms:
                await asyncio.sleep(self.options.stream_chunk_ms / 1000.0)
        last = {"index": 0, "delta": {}, "finish_reason": "stop"} if chat else {
            "index": 0, "text": "", "finish_reason": "stop", "logprobs": None}
        yield orjson.dumps({**base, "choices": [last]})
        if (req.body.get("stream_options") or {}).get("include_usage"):
            yield orjson.dumps({**base, "choices": [], "usage": usage})

    def _embeddings(self, body: dict) -> dict:
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else list(inputs or [])
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i, item in enumerate(items):
            vec = _vector(str(item))
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = prompt_tokens("embeddings", body)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
