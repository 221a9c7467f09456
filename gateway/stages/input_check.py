"""The input quality gate: reject bad requests with a 400 naming the field, before anything costs.

Checks content type, body size (413), JSON, field types per endpoint, the model (exists and the
tenant may use it; an unknown and a forbidden model get the same 404 so nothing leaks), ``max_tokens``
against the model's limits, and the estimated prompt against the context window (for concrete
models without a fallback; routed models are checked by the router, which may move them).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import GatewayError, invalid
from gateway.pipeline import Stage, Verdict
from gateway.policy.model import ModelSpec
from gateway.tokens import prompt_tokens

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_NUMBER = (int, float)


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


def _check_common(body: dict) -> None:
    _expect(body, "stream", (bool,), "a boolean")
    _expect(body, "stream_options", (dict,), "an object")
    for field in ("max_tokens", "max_completion_tokens", "n", "seed"):
        _expect(body, field, (int,), "an integer")
    for field in ("max_tokens", "max_completion_tokens", "n"):
        if body.get(field) is not None and body[field] < 1:
            raise invalid(f"'{field}' must be at least 1, got {body[field]}", param=field, code="invalid_value")
    for field in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _expect(body, field, _NUMBER, "a number")
    _range(body, "temperature", 0, 2)
    _range(body, "top_p", 0, 1)
    _expect(body, "stop", (str, list), "a string or an array of strings")
    _expect(body, "user", (str,), "a string")


def _check_messages(body: dict) -> None:
    messages = body.get("messages")
    if messages is None:
        raise invalid("'messages' is required", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list):
        raise invalid(f"'messages' must be an array, got {_type_name(messages)}", param="messages",
                      code="invalid_type")
    if not messages:
        raise invalid("'messages' must contain at least one message", param="messages", code="invalid_value")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid(f"'{where}' must be an object, got {_type_name(msg)}", param=where, code="invalid_type")
        role = msg.get("role")
        if role not in ROLES:
            raise invalid(f"'{where}.role' must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                          param=f"{where}.role", code="invalid_value")
        content = msg.get("content")
        if content is None and role == "assistant" and (msg.get("tool_calls") or msg.get("function_call")):
            continue
        if not isinstance(content, str | list):
            raise invalid(f"'{where}.content' must be a string or an array of content parts, got "
                          f"{_type_name(content)}", param=f"{where}.content", code="invalid_type")
    _expect(body, "tools", (list,), "an array")


def _check_endpoint(endpoint: str, body: dict) -> None:
    if endpoint == "chat":
        _check_messages(body)
    elif endpoint == "completions":
        prompt = body.get("prompt")
        if prompt is None or prompt == "" or prompt == []:
            raise invalid("'prompt' is required", param="prompt", code="missing_required_parameter")
        _expect(body, "prompt", (str, list), "a string or an array")
    else:
        value = body.get("input")
        if value is None or value == "" or value == []:
            raise invalid("'input' is required and must not be empty", param="input",
                          code="missing_required_parameter")
        _expect(body, "input", (str, list), "a string or an array")
        _expect(body, "encoding_format", (str,), "a string")


def _check_limits(ctx: RequestContext, model: ModelSpec) -> None:
    if model.is_virtual:
        return
    requested = ctx.max_tokens
    window = model.context_window
    cap = model.max_output_tokens
    if requested is not None and cap is not None and requested > cap:
        raise invalid(f"'max_tokens' is {requested}, above the {cap} output tokens model '{ctx.public_model}' "
                      "allows", param="max_tokens", code="invalid_value")
    if requested is not None and window is not None and requested > window:
        raise invalid(f"'max_tokens' is {requested}, beyond the {window}-token context window of model "
                      f"'{ctx.public_model}'", param="max_tokens", code="invalid_value")
    if window is not None and model.context_fallback is None and ctx.prompt_tokens_est + (requested or 0) > window:
        raise invalid(f"The prompt (about {ctx.prompt_tokens_est} tokens) plus max_tokens ({requested or 0}) "
                      f"exceeds the {window}-token context window of model '{ctx.public_model}'",
                      param="messages", code="context_length_exceeded")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it grows past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"The request body exceeds {limit} bytes", code="request_too_large",
                               outcome="rejected")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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

    async def check_input(self, ctx: RequestContext) -> Verdict:
        request = ctx.request
        limit = ctx.policy.input.max_body_bytes
        ctype = request.content_type
        if ctype != "application/json":
            raise invalid(f"Content-Type must be application/json, got '{ctype}'", code="invalid_content_type")
        if (request.content_length or 0) > limit:
            raise GatewayError(413, f"The request body exceeds {limit} bytes", code="request_too_large",
                               outcome="rejected")
        raw = await read_body(request, limit)
        body = parse_json_body(raw)
        model = resolve_model(ctx, body)
        _check_common(body)
        _check_endpoint(ctx.endpoint, body)
        ctx.raw_body, ctx.body = raw, body
        ctx.public_model, ctx.model = model.name, model
        ctx.stream = bool(body.get("stream")) and ctx.endpoint != "embeddings"
        ctx.client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        mt = body.get("max_completion_tokens") or body.get("max_tokens")
        ctx.max_tokens = mt
        ctx.prompt_tokens_est = prompt_tokens(ctx.endpoint, body)
        _check_limits(ctx, model)
        return None
