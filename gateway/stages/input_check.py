"""The input quality gate: reject bad requests with a 400 naming the field, before anything costs.

Checks content type, body size (413), JSON, field types per endpoint, the model (exists and the
tenant may use it; an unknown and a forbidden model get the same 404 so nothing leaks), ``max_tokens``
against the model's limits, and the estimated prompt against the context window (for concrete
models without a fallback; routed models are checked by the router, which may move them).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import GatewayError, invalid
from gateway.pipeline import Stage, Verdict
from gateway.policy.model import ModelSpec
from gateway.surfaces.base import Surface
from gateway.tokens import chat_prompt_tokens, prompt_tokens

_JSON = "application/json"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_NUMBER = (int, float)
# JSON nesting accepted. Deep enough for any JSON schema in tools or response_format; far below what
# the gateway's own encoders handle (orjson encodes at most 254 levels, and the cache key, the upstream
# body and the audit record each wrap the body in a few more), so a body that got in can be re-encoded.
MAX_DEPTH = 100
ENCODER_DEPTH = 254  # levels orjson.dumps encodes (it refuses deeper values)
MAX_CHOICES = 128  # n / best_of: OpenAI's own bound
# max_tokens bound for models without limits: token counts stay exact integers in Lua (tpm weights,
# budget amounts) instead of reaching Redis as 9.2e+18 and failing there.
MAX_OUTPUT_TOKENS = 2**31 - 1
BODY_IDLE_TIMEOUT_S = 30.0  # longest pause while a body arrives (as nginx's client_body_timeout); the pipeline
# reads the policy's server.body_timeout_s and server.body_min_rate instead


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _expect(body: dict, field: str, types: tuple, label: str) -> None:
    if field in body and body[field] is not None:
        value = body[field]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise invalid(f"'{field}' must be {label}, got {_type_name(value)}", param=field, code="invalid_type")


def _range(body: dict, field: str, low: float, high: float) -> None:
    value = body.get(field)
    if value is not None and not (low <= value <= high):
        raise invalid(f"'{field}' must be between {low:g} and {high:g}, got {value}", param=field,
                      code="invalid_value")


# The fields ``_check_common`` reads: each check passes when its field is absent (or null).
_COMMON_FIELDS = frozenset({"stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "best_of", "seed",
                            "temperature", "top_p", "presence_penalty", "frequency_penalty", "stop", "user"})


def _check_common(body: dict) -> frozenset[str]:
    """The shared fields' types and ranges, in a fixed order (the first error found is the one answered);
    only the fields the body has are looked at (most requests carry two or three of the thirteen).
    Returns the fields present (empty: ``_check`` reads none of them)."""
    present = _COMMON_FIELDS.intersection(body)
    if not present:  # nothing to check (a plain chat request)
        return present
    if "stream" in present:
        _expect(body, "stream", (bool,), "a boolean")
    if "stream_options" in present:
        _expect(body, "stream_options", (dict,), "an object")
    if not present.isdisjoint(_INT_FIELDS):
        ints = [f for f in _INT_FIELDS if f in present]
        for field in ints:
            _expect(body, field, (int,), "an integer")
        for field in ints:
            if field != "seed" and body[field] is not None and body[field] < 1:
                raise invalid(f"'{field}' must be at least 1, got {body[field]}", param=field, code="invalid_value")
        for field, most in _INT_MAXIMA:
            if field in present and (body[field] or 0) > most:
                raise invalid(f"'{field}' must be at most {most}, got {body[field]}", param=field,
                              code="invalid_value")
    if not present.isdisjoint(_NUMBER_FIELDS):
        for field in _NUMBER_FIELDS:
            if field in present:
                _expect(body, field, _NUMBER, "a number")
        if "temperature" in present:
            _range(body, "temperature", 0, 2)
        if "top_p" in present:
            _range(body, "top_p", 0, 1)
    if "stop" in present:
        _expect(body, "stop", (str, list), "a string or an array of strings")
        _items(body, "stop", lambda s: isinstance(s, str), "a string")
    if "user" in present:
        _expect(body, "user", (str,), "a string")
    return present


_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "best_of", "seed")
_INT_MAXIMA = (("n", MAX_CHOICES), ("best_of", MAX_CHOICES), ("max_tokens", MAX_OUTPUT_TOKENS),
               ("max_completion_tokens", MAX_OUTPUT_TOKENS))
_NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def _clip(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _items(body: dict, field: str, ok: Callable[[Any], bool], label: str) -> None:
    """Each item of the array ``field`` (when it is one) passes ``ok``; else a 400 naming the item."""
    value = body.get(field)
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not ok(item):
                raise invalid(f"'{field}[{i}]' must be {label}, got {_type_name(item)}", param=f"{field}[{i}]",
                              code="invalid_type")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text_or_tokens(item: Any) -> bool:
    """A prompt/input item: text, a token id, or an array of token ids."""
    return isinstance(item, str) or _is_int(item) or (isinstance(item, list) and all(_is_int(t) for t in item))


def _check_tools(body: dict) -> None:
    """Tools are objects with a string ``type``; a function tool names its function. Other tool types
    (OpenAI's built-in and custom tools) pass through to providers that know them."""
    _expect(body, "tools", (list,), "an array")
    for i, tool in enumerate(body.get("tools") or ()):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise invalid(f"'{where}' must be an object with a string 'type'", param=where, code="invalid_type")
        if tool["type"] == "function":
            fn = tool.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                raise invalid(f"'{where}.function' must be an object with a non-empty string 'name'",
                              param=f"{where}.function", code="invalid_type")


def nesting_exceeds(value: Any, limit: int) -> bool:
    """True when parsed JSON ``value`` nests objects/arrays more than ``limit`` levels deep.

    orjson encodes at most ``ENCODER_DEPTH`` levels, so ``value`` inside ``ENCODER_DEPTH - limit``
    arrays encodes exactly when it nests at most ``limit`` levels: the walk runs in C (a 10,000-message
    body: ~0.2 ms instead of ~6 ms in Python), and nothing recurses in Python. The arrays are built
    once per limit and thread (``_wrapping``) and ``value`` is lent to the innermost one for the encode.
    """
    assert 0 < limit <= ENCODER_DEPTH
    outer, inner = _wrapping(limit)
    inner[0] = value
    try:
        orjson.dumps(outer)
    except orjson.JSONEncodeError:  # from parsed JSON, only the depth limit can fail an encode
        return True
    finally:
        inner[0] = None
    return False


_WRAPPINGS = threading.local()  # per thread: another thread must never lend its value to the same arrays


def _wrapping(limit: int) -> tuple[list, list]:
    """``ENCODER_DEPTH - limit`` nested arrays: the outermost and the innermost (one slot)."""
    found = _WRAPPINGS.__dict__.get(limit)
    if found is None:
        inner: list = [None]
        outer = inner
        for _ in range(ENCODER_DEPTH - limit - 1):
            outer = [outer]
        found = _WRAPPINGS.__dict__[limit] = (outer, inner)
    return found


_SCAN_MAX = 4096  # bytes: below, counting brackets is cheaper than the encode; above, the encode (~3x)


def _check_depth(raw: bytes, body: dict) -> None:
    # A body can't nest deeper than it has brackets: two C-speed scans clear nearly every small request.
    if len(raw) > _SCAN_MAX or raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        deep = nesting_exceeds(body, MAX_DEPTH)
    else:
        deep = False
    if deep:
        raise invalid(f"The request body nests JSON more than {MAX_DEPTH} levels deep", code="invalid_value")


def _check_messages(body: dict) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:  # (the common case tested first; which error, below)
        if messages is None:
            raise invalid("'messages' is required", param="messages", code="missing_required_parameter")
        if not isinstance(messages, list):
            raise invalid(f"'messages' must be an array, got {_type_name(messages)}", param="messages",
                          code="invalid_type")
        raise invalid("'messages' must contain at least one message", param="messages", code="invalid_value")
    for i, msg in enumerate(messages):  # the message's path is spelled only in an error: agents send hundreds
        if not isinstance(msg, dict):
            raise invalid(f"'messages[{i}]' must be an object, got {_type_name(msg)}", param=f"messages[{i}]",
                          code="invalid_type")
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(f"'messages[{i}].role' must be one of {', '.join(sorted(ROLES))}, got {_clip(role)}",
                          param=f"messages[{i}].role", code="invalid_value")
        content = msg.get("content")
        if type(content) is str:
            continue
        if content is None and role == "assistant" and (msg.get("tool_calls") or msg.get("function_call")):
            continue
        if not isinstance(content, str | list):
            raise invalid(f"'messages[{i}].content' must be a string or an array of content parts, got "
                          f"{_type_name(content)}", param=f"messages[{i}].content", code="invalid_type")
        if isinstance(content, list):
            _check_parts(content, f"messages[{i}]")
    if body.get("tools") is not None:  # (absent or null: nothing to check)
        _check_tools(body)


def _check_parts(parts: list, where: str) -> None:
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(f"'{where}.content[{j}]' must be a content part (an object with a string 'type')",
                          param=f"{where}.content[{j}]", code="invalid_type")


def _check_completions(body: dict) -> None:
    prompt = body.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise invalid("'prompt' is required", param="prompt", code="missing_required_parameter")
    _expect(body, "prompt", (str, list), "a string or an array")
    _items(body, "prompt", _text_or_tokens, "a string, a token id or an array of token ids")


def _check_embeddings(body: dict) -> None:
    value = body.get("input")
    if value is None or value == "" or value == []:
        raise invalid("'input' is required and must not be empty", param="input",
                      code="missing_required_parameter")
    _expect(body, "input", (str, list), "a string or an array")
    _items(body, "input", _text_or_tokens, "a string, a token id or an array of token ids")
    if body.get("stream") is True:  # an embedding is one JSON answer; a provider may refuse or misframe it
        raise invalid("'stream' is not supported for embeddings", param="stream", code="invalid_value")
    _expect(body, "encoding_format", (str,), "a string")


# endpoint -> the checks of its own fields (any other: the embeddings'), looked up with no dispatching call
_ENDPOINT_CHECKS: dict[str, Callable[[dict], None]] = {"chat": _check_messages, "completions": _check_completions}


def _check_limits(ctx: RequestContext, model: ModelSpec) -> None:
    if model.route is not None:  # (``is_virtual``, its field read without the property's call)
        return
    requested = ctx.max_tokens
    window = model.context_window
    if requested is not None:
        cap = model.max_output_tokens
        if cap is not None and requested > cap:
            raise invalid(f"'max_tokens' is {requested}, above the {cap} output tokens model '{ctx.public_model}' "
                          "allows", param="max_tokens", code="invalid_value")
        if window is not None and requested > window:
            raise invalid(f"'max_tokens' is {requested}, beyond the {window}-token context window of model "
                          f"'{ctx.public_model}'", param="max_tokens", code="invalid_value")
    if window is not None and model.context_fallback is None and ctx.prompt_tokens_est + (requested or 0) > window:
        raise invalid(f"The prompt (about {ctx.prompt_tokens_est} tokens) plus max_tokens ({requested or 0}) "
                      f"exceeds the {window}-token context window of model '{ctx.public_model}'",
                      param="messages", code="context_length_exceeded")


async def _read_chunk(request: web.Request, wait: float, slow: bool, idle_s: float, min_rate: int) -> bytes:
    """The next piece of the body within ``wait`` seconds (aiohttp itself would wait forever): past it, a
    408, for a body that stopped (``idle_s`` of silence) or one arriving slower than ``min_rate`` (``slow``).
    A body aiohttp cannot decode (bad gzip/deflate data) is a 400."""
    content = request.content
    try:
        if content.is_eof():  # all of it has arrived (small bodies come with the headers): no wait, no timer
            return await content.read(65536)
        async with asyncio.timeout(max(wait, 0.0)):
            return await content.read(65536)
    except web.RequestPayloadError:
        raise GatewayError(400, "The request body could not be decoded; check its Content-Encoding.",
                           code="invalid_body", outcome="rejected") from None
    except TimeoutError:
        if slow:
            raise GatewayError(408, f"The request body arrives slower than {min_rate} bytes/s.",
                               code="request_too_slow", outcome="rejected") from None
        raise GatewayError(408, f"The request body stopped arriving for {idle_s:g} s.",
                           code="request_timeout", outcome="rejected") from None


async def read_body(request: web.Request, limit: int, idle_s: float = BODY_IDLE_TIMEOUT_S,
                    min_rate: int = 0) -> bytes:
    """The whole body, refusing (413) as soon as it grows past ``limit`` bytes.

    Each read waits at most ``idle_s``; with ``min_rate`` the whole body must also arrive within
    ``idle_s + size / min_rate`` seconds, so a body trickling in a byte at a time cannot hold a request
    (and its connection) open forever.
    """
    whole = body_at_hand(request, limit)
    if whole is not None:
        return whole
    chunks: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        wait, slow = idle_s, False
        if min_rate:
            left = started + idle_s + size / min_rate - loop.time()
            if size and left < idle_s:  # (before the first byte the wait is plain silence)
                wait, slow = left, True
        chunk = await _read_chunk(request, wait, slow, idle_s, min_rate)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"The request body exceeds {limit} bytes", code="request_too_large",
                               outcome="rejected")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def body_at_hand(request: web.Request, limit: int) -> bytes | None:
    """The whole body when it arrived with the headers (no wait, no timer) within ``limit``; else None."""
    content = request.content
    if content.is_eof() and content.total_bytes <= limit:
        try:
            return content.read_nowait()
        except web.RequestPayloadError:
            raise GatewayError(400, "The request body could not be decoded; check its Content-Encoding.",
                               code="invalid_body", outcome="rejected") from None
    return None


def parse_json_body(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid(f"The request body must be a JSON object, got {_type_name(body)}", code="invalid_json")
    return body


def resolve_model(ctx: RequestContext, body: dict) -> ModelSpec:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise invalid("'model' is required and must be a string", param="model", code="missing_required_parameter")
    model = ctx.policy.models.get(name)
    assert ctx.tenant is not None
    if model is None or not (ctx.tenant.may_use(name) or ctx.tenant.may_use(model.name)):
        raise GatewayError(404, f"The model '{name}' does not exist or you do not have access to it.",
                           param="model", code="model_not_found", outcome="rejected")
    return model


class InputStage(Stage):
    name = "input"

    def check_input(self, ctx: RequestContext) -> Verdict | Awaitable[Verdict]:
        """Plain (no coroutine) when the body came whole with the headers and the surface is the
        pipeline's own form; reading the rest of a body, or a surface's translation, is returned to be
        awaited."""
        request = ctx.request
        limit = ctx.policy.input.max_body_bytes
        if request.headers.get("Content-Type") != _JSON and (ctype := request.content_type) != _JSON:
            raise invalid(f"Content-Type must be application/json, got '{ctype}'", code="invalid_content_type")
        if (request.content_length or 0) > limit:
            raise GatewayError(413, f"The request body exceeds {limit} bytes", code="request_too_large",
                               outcome="rejected")
        raw = body_at_hand(request, limit)
        if raw is None:
            return self._read(ctx, limit)
        return self._parsed(ctx, raw)

    async def _read(self, ctx: RequestContext, limit: int) -> Verdict:
        server = ctx.policy.server
        pending = self._parsed(ctx, await read_body(ctx.request, limit, server.body_timeout_s, server.body_min_rate))
        if pending is not None:
            await pending
        return None

    def _parsed(self, ctx: RequestContext, raw: bytes) -> Awaitable[Verdict] | None:
        body = parse_json_body(raw)
        _check_depth(raw, body)
        if type(ctx.surface).inbound is not Surface.inbound:  # a surface that translates its body
            return self._translated(ctx, raw, body)
        self._check(ctx, raw, body)
        return None

    async def _translated(self, ctx: RequestContext, raw: bytes, body: dict) -> Verdict:
        self._check(ctx, raw, await ctx.surface.inbound(ctx, body))
        return None

    @staticmethod
    def _check(ctx: RequestContext, raw: bytes, body: dict) -> None:
        """The checks of the body in the internal form, and the facts the later phases read."""
        endpoint = ctx.endpoint
        model = resolve_model(ctx, body)
        present = _check_common(body)
        _ENDPOINT_CHECKS.get(endpoint, _check_embeddings)(body)
        ctx.raw_body, ctx.body = raw, body
        if ctx.surface.name == "openai":  # the client's bytes say exactly ``body`` until a stage replaces it
            ctx.raw_of = body
        ctx.public_model, ctx.model = model.name, model
        if present:
            ctx.stream = bool(body.get("stream")) and endpoint != "embeddings"
            options = body.get("stream_options")
            ctx.client_wants_usage = bool(options.get("include_usage")) if options else False
            ctx.max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            if endpoint != "embeddings":
                n, best_of = body.get("n"), body.get("best_of")
                ctx.choices = max(n or 1, best_of or 1) if n or best_of else 1
        else:  # none of those fields: what each reads when absent
            ctx.stream = ctx.client_wants_usage = False
            ctx.max_tokens = None
            if endpoint != "embeddings":
                ctx.choices = 1
        ctx.prompt_tokens_est = chat_prompt_tokens(body) if endpoint == "chat" else prompt_tokens(endpoint, body)
        _check_limits(ctx, model)
