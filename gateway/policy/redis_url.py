"""``state.redis_url``: parsed once, the same way for ``gateway validate`` and for the backend.

redis-py's own URL parsing accepts any query option and only fails when a connection is first
made (a ``ValueError`` on the first request, or an unexpected keyword deep in the pool), so the
gateway parses the URL itself: a scheme it knows, a numeric database, and a fixed table of query
options with their types. Whatever passes here builds a client without surprises. Messages never
repeat the URL, which may hold a password.

The socket options tune the sockets only; ``state.timeout_ms`` still bounds every call.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

SCHEMES = ("redis", "rediss", "unix")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _number(text: str, strict: bool = True) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        raise ValueError(f"must be a number {'>' if strict else '>='} 0, got '{text}'")
    return value


def _positive(text: str) -> float:
    return _number(text)


def _non_negative(text: str) -> float:
    return _number(text, strict=False)


def _integer(text: str, minimum: int = 0) -> int:
    if not text.strip().isdigit() or int(text) < minimum:
        raise ValueError(f"expected an integer >= {minimum}, got '{text}'")
    return int(text)


def _count(text: str) -> int:
    return _integer(text, 1)


def _boolean(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"expected true or false, got '{text}'")


def _text(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _cert_reqs(text: str) -> str:
    if text not in ("none", "optional", "required"):
        raise ValueError(f"expected none, optional or required, got '{text}'")
    return text


# query option -> parser; ``ssl_*`` options need rediss://
OPTIONS: dict[str, Callable[[str], Any]] = {
    "db": _integer,
    "socket_timeout": _positive,
    "socket_connect_timeout": _positive,
    "socket_keepalive": _boolean,
    "health_check_interval": _non_negative,
    "max_connections": _count,
    "client_name": _text,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ca_certs": _text,
    "ssl_certfile": _text,
    "ssl_keyfile": _text,
    "ssl_check_hostname": _boolean,
}


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to connect: what the backends build their clients from."""

    scheme: str
    host: str = ""
    port: int = 6379
    path: str = ""  # unix socket
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to a redis-py connection and ``RedisCluster`` (not the address)."""
        kwargs: dict[str, Any] = {"username": self.username, "password": self.password}
        kwargs.update((k, v) for k, v in self.options.items() if k not in ("db", "max_connections"))
        return kwargs


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, OPTIONS, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(OPTIONS)}"
    return f"unknown option '{name}' ({hint})"


def _options(query: str, scheme: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("invalid query string (expected ?name=value&...)") from None
    for name, value in pairs:
        parse = OPTIONS.get(name)
        if parse is None:
            raise ValueError(_unknown(name))
        if name in options:
            raise ValueError(f"option '{name}' is given twice")
        if name.startswith("ssl_") and scheme != "rediss":
            raise ValueError(f"option '{name}' needs a rediss:// URL")
        try:
            options[name] = parse(value)
        except ValueError as exc:
            raise ValueError(f"option '{name}': {exc}") from None
    return options


def _db_from_path(path: str) -> int | None:
    name = unquote(path).strip("/")
    if not name:
        return None
    if not name.isdigit():
        raise ValueError(f"invalid database '{name}' in the path (expected /0, /1, ...)")
    return int(name)


def parse_redis_url(url: str) -> RedisTarget:
    """The target of ``url``; ``ValueError`` with a message fit for ``key.path: message``."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # e.g. an unbalanced IPv6 bracket
        raise ValueError(f"invalid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if "://" not in url:
        raise ValueError("not a URL (expected redis://host:port/db, rediss://... or unix:///path)")
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported scheme '{scheme}' (expected redis://, rediss:// or unix://)")
    options = _options(parts.query, scheme)
    if parts.fragment:
        raise ValueError("unexpected '#' fragment")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// needs a socket path, e.g. unix:///run/redis.sock")
        return RedisTarget(scheme, path=unquote(parts.path), db=options.get("db", 0), username=username,
                           password=password, options=options)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("invalid port (expected 1-65535)") from None
    if not parts.hostname:
        raise ValueError(f"missing host (expected {scheme}://host:port/db)")
    if port == 0:
        raise ValueError("invalid port (expected 1-65535)")
    from_path = _db_from_path(parts.path)
    if from_path is not None and "db" in options and options["db"] != from_path:
        raise ValueError(f"database {from_path} in the path but db={options['db']} in the query")
    db = options.get("db", from_path or 0)
    return RedisTarget(scheme, host=parts.hostname, port=port or 6379, db=db, username=username,
                       password=password, options=options)
