"""Small answers outside the pipeline: JSON bodies and errors in the OpenAI shape."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError


def json_reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json", headers=headers)


def error_json(err: GatewayError) -> web.Response:
    return web.Response(status=err.status, body=err.body(), content_type="application/json", headers=err.headers)
