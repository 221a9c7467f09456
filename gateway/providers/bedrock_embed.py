"""OpenAI embeddings <-> Bedrock InvokeModel bodies for Titan and Cohere embedding models (pure).

Titan Text Embeddings (``amazon.titan-embed-text-*``) embeds one text per call: ``{"inputText",
"dimensions"}`` -> ``{"embedding", "inputTextTokenCount"}``. Cohere Embed (``cohere.embed-*``) takes
up to 96 texts per call: ``{"texts", "input_type"}`` -> ``{"embeddings"}`` (a list, or by type when
``embedding_types`` was asked for). Token counts come from the ``x-amzn-bedrock-input-token-count``
header when Bedrock sends it, else from the body.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from gateway.errors import invalid

COHERE_BATCH = 96
DEFAULT_INPUT_TYPE = "search_document"


def family(model: str) -> str | None:
    """``titan`` or ``cohere`` for a model id, inference profile or ARN ending in one."""
    tail = model.rsplit("/", 1)[-1]
    if "amazon.titan-embed" in tail:
        return "titan"
    if "cohere.embed" in tail:
        return "cohere"
    return None


def texts(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
        raise invalid("bedrock embeddings take a string or a list of strings (not token ids)", param="input")
    return raw


def requests(kind: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The InvokeModel bodies for one embeddings request, in input order."""
    inputs = texts(body)
    dimensions = body.get("dimensions")
    if kind == "titan":
        extra = {"dimensions": dimensions} if dimensions else {}
        return [{"inputText": text, **extra} for text in inputs]
    input_type = body.get("input_type") or DEFAULT_INPUT_TYPE
    extra = {"output_dimension": dimensions} if dimensions else {}
    return [{"texts": inputs[i:i + COHERE_BATCH], "input_type": input_type, **extra}
            for i in range(0, len(inputs), COHERE_BATCH)]


def vectors(kind: str, answer: dict[str, Any]) -> list[list[float]]:
    """The embeddings of one InvokeModel answer."""
    if kind == "titan":
        return [answer["embedding"]]
    embeddings = answer["embeddings"]
    if isinstance(embeddings, dict):  # asked for by type
        embeddings = embeddings["float"]
    return list(embeddings)


def token_count(kind: str, headers: dict[str, str], answer: dict[str, Any]) -> int:
    raw = headers.get("x-amzn-bedrock-input-token-count")
    if raw and raw.isdigit():
        return int(raw)
    return int(answer.get("inputTextTokenCount") or 0) if kind == "titan" else 0


def answer(model: str, embeddings: list[list[float]], prompt_tokens: int, as_base64: bool) -> dict[str, Any]:
    """An OpenAI ``list`` of embeddings; base64 is little-endian float32, as OpenAI sends it."""
    data = []
    for i, vec in enumerate(embeddings):
        value: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if as_base64 else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
