"""The built-in mock provider: deterministic OpenAI-shaped answers with no network.

For demos, load tests and CI. ``latency_ms`` delays the first byte, ``stream_chunk_ms`` paces stream
chunks, ``failure_rate`` makes that share of calls fail with a 503 (drawn from an injectable RNG).
Answers (``mock_answers``) follow ``n``, function ``tools``/``tool_choice`` and ``response_format``;
embeddings follow ``dimensions`` and ``encoding_format``. Identical requests get identical answers,
in OpenAI's wire format: ``chat.completion``, ``chat.completion.chunk`` (choices interleaved per
index, tool call id and name first, then the arguments in a few pieces), ``text_completion``, ``list``.
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
from gateway.providers.mock_answers import Answer, answers
from gateway.tokens import prompt_tokens

EMBEDDING_DIM = 16  # vector length when the request names no ``dimensions``
MAX_EMBEDDING_DIM = 4096
ARGUMENT_PIECES = 4  # a streamed tool call's arguments arrive in about this many chunks


@dataclass(frozen=True, slots=True)
class MockOptions:
    latency_ms: float = 0.0  # delay before the first byte
    failure_rate: float = 0.0  # share of calls answered 503
    stream_chunk_ms: float = 0.0  # pause between stream chunks


OPTION_KEYS = {"latency_ms": number(ge=0), "failure_rate": number(ge=0, le=1), "stream_chunk_ms": number(ge=0)}


def _vector(text: str, dims: int = EMBEDDING_DIM) -> list[float]:
    """``dims`` values in [-1, 1) from SHA-256 blocks of the text (the first block alone up to 32)."""
    data = hashlib.sha256(text.encode()).digest()
    block = 1
    while len(data) < dims:
        data += hashlib.sha256(f"{block}:{text}".encode()).digest()
        block += 1
    return [round((b - 128) / 128.0, 6) for b in data[:dims]]


def _error(status: int, message: str, param: str | None = None) -> UpstreamResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return UpstreamResponse(status=status, headers={"retry-after": "1"} if status >= 500 else {},
                            body=orjson.dumps(body))


def _message(answer: Answer) -> dict:
    message: dict = {"role": "assistant", "content": answer.text, "refusal": None, "annotations": []}
    if answer.tool_call is not None:
        call = answer.tool_call
        message["tool_calls"] = [{"id": call.id, "type": "function",
                                  "function": {"name": call.name, "arguments": call.arguments}}]
    return message


def _pieces(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _chat_deltas(answer: Answer) -> list[dict]:
    """The deltas of one streamed chat choice, before its finishing chunk."""
    if answer.tool_call is None:
        words = (answer.text or "").split(" ")
        return [{"role": "assistant", "content": w} if i == 0 else {"content": " " + w} for i, w in enumerate(words)]
    call = answer.tool_call
    head = {"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
    deltas: list[dict] = [{"role": "assistant", "content": None, "tool_calls": [head]}]
    for piece in _pieces(call.arguments, ARGUMENT_PIECES):
        deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    return deltas


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
            return _error(503, "mock failure")
        if req.endpoint == "embeddings":
            return self._embeddings(req.body)
        given = answers(req.body, req.endpoint)
        usage = {"prompt_tokens": prompt_tokens(req.endpoint, req.body),
                 "completion_tokens": sum(a.tokens for a in given)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if req.stream:
            return UpstreamResponse(status=200, headers={}, events=self._stream(req, given, usage))
        return UpstreamResponse(status=200, headers={}, body=orjson.dumps(self._whole(req, given, usage)))

    def _whole(self, req: UpstreamRequest, given: list[Answer], usage: dict) -> dict:
        base = {"id": f"mock-{req.request_id}", "created": int(time.time()), "model": req.body.get("model")}
        if req.endpoint == "chat":
            choices = [{"index": i, "message": _message(a), "logprobs": None, "finish_reason": a.finish_reason}
                       for i, a in enumerate(given)]
            return {**base, "object": "chat.completion", "choices": choices, "usage": usage}
        choices = [{"index": i, "text": a.text, "finish_reason": a.finish_reason, "logprobs": None}
                   for i, a in enumerate(given)]
        return {**base, "object": "text_completion", "choices": choices, "usage": usage}

    async def _stream(self, req: UpstreamRequest, given: list[Answer], usage: dict) -> AsyncIterator[bytes]:
        chat = req.endpoint == "chat"
        base = {
            "id": f"mock-{req.request_id}",
            "created": int(time.time()),
            "model": req.body.get("model"),
            "object": "chat.completion.chunk" if chat else "text_completion",
        }
        if chat:
            per_choice = [[{"delta": d, "logprobs": None, "finish_reason": None} for d in _chat_deltas(a)]
                          for a in given]
        else:
            per_choice = [[{"text": w if j == 0 else " " + w, "finish_reason": None, "logprobs": None}
                           for j, w in enumerate((a.text or "").split(" "))] for a in given]
        for step in range(max(len(c) for c in per_choice)):
            for index, chunks in enumerate(per_choice):
                if step < len(chunks):
                    yield orjson.dumps({**base, "choices": [{"index": index, **chunks[step]}]})
            if self.options.stream_chunk_ms:
                await asyncio.sleep(self.options.stream_chunk_ms / 1000.0)
        for index, answer in enumerate(given):
            last = {"delta": {}} if chat else {"text": ""}
            yield orjson.dumps({**base, "choices": [
                {"index": index, **last, "logprobs": None, "finish_reason": answer.finish_reason}]})
        options = req.body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            yield orjson.dumps({**base, "choices": [], "usage": usage})

    def _embeddings(self, body: dict) -> UpstreamResponse:
        dims = body.get("dimensions", EMBEDDING_DIM)
        if dims is None:
            dims = EMBEDDING_DIM
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= MAX_EMBEDDING_DIM:
            return _error(400, f"dimensions must be an integer from 1 to {MAX_EMBEDDING_DIM}", "dimensions")
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else inputs if isinstance(inputs, list) else []
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i, item in enumerate(items):
            vec = _vector(str(item), dims)
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = prompt_tokens("embeddings", body)
        answer = {"object": "list", "data": data, "model": body.get("model"),
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return UpstreamResponse(status=200, headers={}, body=orjson.dumps(answer))
