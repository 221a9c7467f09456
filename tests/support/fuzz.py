"""Seeded hostile requests for the robustness test: valid bodies mutated field by field, odd headers.

Everything comes from one ``random.Random(seed)``, so a failing case is reproduced by its seed and
index. Bodies are serialised with the standard library's ``json`` (it writes what orjson refuses:
``NaN``, ``Infinity``, integers past 64 bits, lone surrogates), and some are then broken at the byte
level (truncated, invalid UTF-8, a BOM).
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from dataclasses import dataclass, field
from typing import Any

TEXT = "Hello, could you summarise this for me?"
TOOL = {"type": "function", "function": {"name": "lookup", "description": "find",
                                         "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}

# Every field a client commonly sends, per endpoint, with a valid value.
CHAT_FIELDS: dict[str, Any] = {
    "temperature": 0, "max_tokens": 16, "stream": False, "stream_options": {"include_usage": True},
    "seed": 7, "user": "u-1", "tools": [TOOL], "tool_choice": "auto", "response_format": {"type": "json_object"},
    "stop": ["\n\n"], "n": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0,
    "max_completion_tokens": 16, "logit_bias": {"50256": -100}, "metadata": {"k": "v"}, "parallel_tool_calls": True,
}
COMPLETION_FIELDS: dict[str, Any] = {
    "temperature": 0, "max_tokens": 16, "stream": False, "stream_options": {"include_usage": True}, "seed": 7,
    "user": "u-1", "stop": "\n", "n": 1, "echo": False, "logprobs": None, "suffix": None,
}
EMBEDDING_FIELDS: dict[str, Any] = {"encoding_format": "float", "user": "u-1", "dimensions": 3}
MODELS = ["small", "large", "auto", "emb", "mini", "claude", "demo", "wide", "nope", ""]
NESTED_CHAT = ["messages[].role", "messages[].content", "messages[].content[]", "messages[].name",
               "messages[].tool_calls", "messages[]", "tools[]", "tools[].type", "tools[].function",
               "tool_choice.function", "response_format.type", "response_format.json_schema",
               "stream_options.include_usage"]


def _deep(rng: random.Random) -> Any:
    depth = rng.choice([20, 120, 253, 260, 600, 1000, 1100])
    value: Any = rng.choice(["x", 1, None])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


def hostile(rng: random.Random) -> Any:
    """One value of a wrong or extreme kind."""
    pick = rng.randrange(30)
    return [
        None, True, False, 0, -1, 1.5, 2**63, 2**64 + 1, 10**30, -(10**30), 1e308, -1e308, 1e-320,
        "", "NaN", "Infinity", "-inf", "1e999", "null", "\u0000\u0001", "\u202e\u200b\ufeff",
        "\U0001f600" * rng.randrange(1, 50), "a" * rng.choice([1, 1000, 100_000]),
        [], {}, [None], {"": None}, {"type": None},
        [{"type": "text", "text": 5}, 7],
        _deep(rng),
    ][pick]


@dataclass
class Case:
    """One request to send: endpoint path, headers, raw body bytes, and what it was built from."""

    index: int
    path: str
    headers: dict[str, Any]
    body: bytes
    note: list[str] = field(default_factory=list)
    stream: bool = False


class Fuzzer:
    def __init__(self, seed: int, keys: list[str], secrets: list[str]) -> None:
        self.rng = random.Random(seed)
        self.keys = keys  # valid tenant keys (the first one most often)
        self.secrets = secrets  # strings that must never come back; some are planted in bodies

    # -- bodies ---------------------------------------------------------------------------------------
    def base(self, endpoint: str) -> dict[str, Any]:
        rng = self.rng
        pool = {"chat": CHAT_FIELDS, "completions": COMPLETION_FIELDS, "embeddings": EMBEDDING_FIELDS}[endpoint]
        body: dict[str, Any] = {"model": "emb" if endpoint == "embeddings" else rng.choice(["small", "auto", "mini", "claude", "demo"])}
        if endpoint == "chat":
            body["messages"] = [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": [{"type": "text", "text": TEXT}]
                                 if rng.random() < 0.3 else TEXT}]
        elif endpoint == "completions":
            body["prompt"] = TEXT
        else:
            body["input"] = rng.choice([TEXT, [TEXT, "second"], [[1, 2, 3]]])
        for name in rng.sample(sorted(pool), rng.randrange(0, len(pool) // 2 + 1)):
            body[name] = copy.deepcopy(pool[name])
        if rng.random() < 0.3:
            body["stream"] = True
        return body

    def mutate(self, body: dict[str, Any], endpoint: str, note: list[str]) -> Any:
        rng = self.rng
        kind = rng.random()
        if kind < 0.05:
            note.append("whole body")
            return hostile(rng)
        pool = {"chat": CHAT_FIELDS, "completions": COMPLETION_FIELDS, "embeddings": EMBEDDING_FIELDS}[endpoint]
        own = {"chat": "messages", "completions": "prompt", "embeddings": "input"}[endpoint]
        if kind < 0.45:
            name = rng.choice(sorted(pool) + ["model", own, own, "model"])
            body[name] = hostile(rng)
            note.append(f"{name}=hostile")
        elif kind < 0.55:
            name = rng.choice(sorted(body) or ["model"])
            body.pop(name, None)
            note.append(f"-{name}")
        elif kind < 0.62:
            body["model"] = rng.choice(MODELS)
            note.append(f"model={body['model']}")
        elif kind < 0.67:
            body[rng.choice(["x_unknown", "functions", "audio", "prediction"])] = hostile(rng)
            note.append("unknown field")
        elif kind < 0.72 and self.secrets:
            self._plant_secret(body, endpoint)
            note.append("planted secret")
        elif endpoint == "chat":
            self._mutate_nested(body, note)
        else:
            body[own] = rng.choice([[hostile(rng)], [TEXT, hostile(rng)], hostile(rng)])
            note.append(f"{own}[]=hostile")
        return body

    def _plant_secret(self, body: dict[str, Any], endpoint: str) -> None:
        secret = self.rng.choice(self.secrets)
        text = f"my key is {secret} please repeat it"
        if endpoint == "chat" and isinstance(body.get("messages"), list):
            body["messages"].append({"role": "user", "content": text})
        elif endpoint == "completions":
            body["prompt"] = text
        else:
            body["input"] = text

    def _mutate_nested(self, body: dict[str, Any], note: list[str]) -> None:
        rng = self.rng
        where = rng.choice(NESTED_CHAT)
        note.append(f"{where}=hostile")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            msgs = body["messages"] = [{"role": "user", "content": TEXT}]
        msg = rng.choice(msgs)
        if not isinstance(msg, dict):
            return
        head, _, tail = where.partition(".")
        if where == "messages[]":
            msgs[rng.randrange(len(msgs))] = hostile(rng)
        elif head == "messages[]" and tail == "content[]":
            msg["content"] = [{"type": "text", "text": TEXT}, rng.choice([
                hostile(rng), {"type": hostile(rng)}, {"type": "text", "text": hostile(rng)},
                {"type": "image_url", "image_url": hostile(rng)}, {"type": "input_audio", "input_audio": {}}])]
        elif head == "messages[]":
            msg[tail] = hostile(rng)
        elif head == "tools[]":
            tool = copy.deepcopy(TOOL)
            tool[tail] = hostile(rng)
            body["tools"] = [tool if tail else hostile(rng)]
        else:
            holder = body.get(head)
            body[head] = holder = holder if isinstance(holder, dict) else {}
            holder[tail] = hostile(rng)

    # -- bytes and headers ----------------------------------------------------------------------------
    def encode(self, body: Any, note: list[str]) -> bytes:
        rng = self.rng
        try:
            raw = json.dumps(body).encode("utf-8", "surrogatepass")
        except (ValueError, RecursionError):
            raw = b'{"model": "small"'
        roll = rng.random()
        if roll < 0.03:
            note.append("truncated")
            return raw[: rng.randrange(max(1, len(raw)))]
        if roll < 0.05:
            note.append("invalid utf-8")
            return raw.replace(b"Hello", b"\xff\xfeHello")
        if roll < 0.06:
            note.append("bom")
            return b"\xef\xbb\xbf" + raw
        if roll < 0.07:
            note.append("empty")
            return b""
        return raw

    def headers(self, note: list[str]) -> dict[str, Any]:
        rng = self.rng
        h: dict[str, Any] = {"content-type": "application/json"}
        roll = rng.random()
        key = self.keys[0] if rng.random() < 0.7 else rng.choice(self.keys)
        if roll < 0.8:
            h["authorization"] = f"Bearer {key}"
        else:
            h["authorization"] = rng.choice([
                "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", f"bearer   {key}  ", "Bearer " + "k" * 6000,
                b"Bearer \xff\xfe\xfd", "Bearer sk-\u00e9\u00e8", f"Bearer {key}, Bearer other", "Token abc"])
            note.append("odd auth")
        extra = [
            ("x-request-id", "r" * rng.choice([10, 129, 4000])), ("x-request-id", b"\xff\x00bad"),
            ("cache-control", rng.choice(["no-cache", "no-store", "max-age=-1", "max-age=1e999", "max-age=nan",
                                          "max-age=abc", "max-age", ",,,", "no-cache=\"x\", max-age=5", "\u00ff"])),
            ("x-gateway-cache-ttl", rng.choice(["-5", "0", "abc", "1e999", "nan", "inf", " 10 ", "9" * 400])),
            ("content-type", rng.choice(["text/plain", "application/x-www-form-urlencoded", "application/json;;;",
                                         "application/json; charset=latin-1", "multipart/form-data", "", "*/*",
                                         "application/JSON"])),
            ("x-gateway-tier", rng.choice(["large", "LARGE ", "\u00e9", ""])),
            ("accept-encoding", "gzip, br, zstd"), ("openai-organization", "org-x"), ("x-stainless-retry-count", "x"),
            ("content-encoding", "gzip"),
        ]
        for name, value in rng.sample(extra, rng.randrange(0, 4)):
            h[name] = value
            note.append(f"{name}")
        return {k: v.encode() if isinstance(v, str) else v for k, v in h.items()}  # raw UTF-8 on the wire

    def case(self, index: int) -> Case:
        rng = self.rng
        endpoint = rng.choice(["chat", "chat", "chat", "completions", "embeddings"])
        note: list[str] = [endpoint]
        body: Any = self.base(endpoint)
        for _ in range(rng.randrange(0, 3)):
            if isinstance(body, dict):
                body = self.mutate(body, endpoint, note)
        stream = isinstance(body, dict) and body.get("stream") is True
        headers = self.headers(note)
        raw = self.encode(body, note)
        if headers.get("content-encoding") == "gzip" and rng.random() < 0.5:
            raw = gzip.compress(raw)
            note.append("gzipped")
        path = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}
        return Case(index, path[endpoint], headers, raw, note, stream)
