"""The cache key: which requests get the same answer, and who may see it.

The key hashes every body field except those known not to change the answer (``IGNORED``), so a
field this gateway has never heard of still separates entries (safe by default). The public model
(after alias resolution) replaces the requested name, so an alias and its model share entries; the
endpoint is part of the key because a chat and a legacy completion never share an answer.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.state.base import hash_tag

# Transport and bookkeeping fields: the same answer whatever their value.
IGNORED = frozenset({"model", "user", "stream", "stream_options", "metadata", "store", "service_tier"})
SHARED_NAMESPACE = "shared"


def canonical(endpoint: str, public_model: str, body: dict[str, Any]) -> bytes:
    """The answer-determining part of a request, serialised canonically (sorted keys, no spaces)."""
    fields = {k: v for k, v in body.items() if k not in IGNORED}
    return orjson.dumps([endpoint, public_model, fields], option=orjson.OPT_SORT_KEYS)


def digest(endpoint: str, public_model: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(endpoint, public_model, body)).hexdigest()


def namespace(tenant: str, shared: bool) -> str:
    """Entries of a tenant are its own unless the tenant opts into the shared namespace."""
    return SHARED_NAMESPACE if shared else f"t.{tenant}"


def key_head(prefix: str, tenant: str, shared: bool) -> str:
    """What every key of a tenant's namespace starts with: ``<prefix>:{<namespace>}:cache:``."""
    return f"{hash_tag(prefix, namespace(tenant, shared))}:cache:"


def cache_key(prefix: str, tenant: str, shared: bool, endpoint: str, public_model: str,
              body: dict[str, Any]) -> str:
    """``<prefix>:{<namespace>}:cache:<sha256>``; the hash tag keeps a namespace on one cluster slot.

    Tenant namespaces carry a ``t.`` prefix so a tenant called ``shared`` can't read shared entries.
    """
    return key_head(prefix, tenant, shared) + digest(endpoint, public_model, body)


_NUMBER = (int, float)  # a tuple: ``int | float`` would build a union object on every call
UNSAMPLED = frozenset({"embeddings"})  # endpoints whose answer does not depend on sampling


def is_deterministic(body: dict[str, Any], endpoint: str = "chat") -> bool:
    """Is the answer meant to repeat? ``temperature: 0`` (or below), or any temperature with a ``seed``.

    A missing temperature means the API default, 1: a sampled answer, which a client asking twice
    expects to differ, so it is not cached unless the tenant sets ``cache.nondeterministic: true``.
    Embeddings involve no sampling and are always cacheable.
    """
    if endpoint in UNSAMPLED:
        return True
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature")
    return isinstance(temperature, _NUMBER) and not isinstance(temperature, bool) and temperature <= 0
