"""Per-request cache controls, as HTTP clients already know them.

``Cache-Control: no-cache`` skips the lookup but refreshes the entry, ``no-store`` never writes,
``max-age=N`` accepts only entries younger than N seconds; ``x-gateway-cache-ttl: N`` lowers (never
raises) the policy's TTL, and 0 means "don't store". Malformed values are ignored rather than
refused: a cache hint must never fail a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TTL_HEADER = "x-gateway-cache-ttl"


@dataclass(slots=True)
class Controls:
    lookup: bool = True
    store: bool = True
    max_age_s: float | None = None
    ttl_s: float = 0.0


def _seconds(text: str) -> float | None:
    try:
        value = float(text.strip().strip('"'))
    except ValueError:
        return None
    return value if value >= 0 and value == value and value != float("inf") else None


def parse_controls(headers: Mapping[str, str], ttl_s: float) -> Controls:
    """The controls of one request, with ``ttl_s`` the policy's TTL for its tenant."""
    controls = Controls(True, True, None, ttl_s)  # (lookup, store, max_age_s, ttl_s)
    directives = headers.get("cache-control")
    if directives:
        for part in directives.split(","):
            name, _, value = part.strip().lower().partition("=")
            if name == "no-cache":
                controls.lookup = False
            elif name == "no-store":
                controls.store = False
            elif name == "max-age":
                controls.max_age_s = _seconds(value)
    lowered = headers.get(TTL_HEADER)
    if lowered:
        ttl = _seconds(lowered)
        if ttl is not None:
            controls.ttl_s = min(ttl_s, ttl)
            controls.store = controls.store and ttl > 0
    return controls
