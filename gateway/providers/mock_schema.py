"""Placeholder JSON values that satisfy a (simple) JSON schema, for the mock provider. Pure, no I/O.

Covered: ``type`` (one or a list; ``null`` only when alone), ``const``, ``enum`` (the first value),
``anyOf``/``oneOf`` (the first non-null option), ``allOf`` (properties and required merged), local
``$ref`` (``#/$defs/...``), objects (the *required* properties only), arrays (``minItems`` items,
at least one unless ``maxItems`` is 0), strings (``minLength``/``maxLength`` and the common
``format`` values), numbers and integers (``minimum``/``maximum``, exclusive bounds, integer
``multipleOf``) and booleans. Not covered: ``pattern``, ``uniqueItems`` with several items,
``if``/``then``, ``not``, remote references. Depth, node count, array and string sizes are capped.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 24  # a recursive schema stops here (a required self-reference has no finite instance)
MAX_NODES = 2000  # values generated per call, so a hostile schema cannot make a huge answer
MAX_ITEMS = 64
MAX_STRING = 4096
STRING_FORMATS = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "email": "mock@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}


def placeholder(schema: Any) -> Any:
    """A deterministic value valid against ``schema`` (within the limits above; past them, ``None``)."""
    return _Generator(schema).value(schema, "value", 0)


class _Generator:
    """One walk over a schema: ``root`` for ``$ref``, and what is left of the node budget."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.budget = MAX_NODES

    def value(self, schema: Any, name: str, depth: int) -> Any:
        """A value for ``schema``; ``name`` (the property's) shapes strings."""
        self.budget -= 1
        if self.budget < 0 or depth > MAX_DEPTH:
            return None
        if not isinstance(schema, dict):
            return f"mock {name}"  # ``true`` or a malformed schema: anything goes
        if isinstance(schema.get("$ref"), str):
            return self.value(_resolve(self.root, schema["$ref"]), name, depth + 1)
        if "const" in schema:
            return self._copied(schema["const"])
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._copied(schema["enum"][0])
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                concrete = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
                return self.value((concrete or options)[0], name, depth + 1)
        if isinstance(schema.get("allOf"), list):
            return self.value(_merge(schema, self.root), name, depth + 1)
        kind = _type(schema)
        if kind == "object":
            properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
            required = schema.get("required") if isinstance(schema.get("required"), list) else []
            return {key: self.value(properties.get(key, {}), key, depth + 1) for key in required if isinstance(key, str)}
        if kind == "array":
            count = min(max(_int(schema.get("minItems"), 0), 1), MAX_ITEMS)
            most = schema.get("maxItems")
            if isinstance(most, int) and not isinstance(most, bool):
                count = min(count, most)
            return [self.value(schema.get("items", {}), name, depth + 1) for _ in range(count)]
        if kind in ("integer", "number"):
            return _number(schema, kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        text = _string(schema, name)
        self.budget -= len(text) // 64
        return text

    def _copied(self, value: Any) -> Any:
        """A ``const``/``enum`` value, charged by its size (it may be repeated many times)."""
        if isinstance(value, dict | list | str):
            self.budget -= len(json.dumps(value)) // 64
        return value


def _resolve(root: Any, ref: str) -> Any:
    """A local JSON pointer (``#/$defs/Name``); anything else resolves to an empty (any-value) schema."""
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


def _merge(schema: dict, root: Any) -> dict:
    """``allOf`` flattened into one schema: later parts' keys win, properties and required combine."""
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    properties = dict(merged["properties"]) if isinstance(merged.get("properties"), dict) else {}
    required = list(merged["required"]) if isinstance(merged.get("required"), list) else []
    for part in schema["allOf"]:
        if isinstance(part, dict) and isinstance(part.get("$ref"), str):
            part = _resolve(root, part["$ref"])
        if not isinstance(part, dict):
            continue
        merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
        if isinstance(part.get("properties"), dict):
            properties.update(part["properties"])
        if isinstance(part.get("required"), list):
            required += [r for r in part["required"] if r not in required]
    if properties:
        merged["properties"] = properties
    if required:
        merged["required"] = required
    return merged


def _type(schema: dict) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        concrete = [k for k in kind if k != "null"]
        kind = concrete[0] if concrete else ("null" if kind else None)
    if kind is None:
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema:
            return "array"
    return kind if isinstance(kind, str) else None


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _bound(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number(schema: dict, integer: bool) -> int | float:
    """0, or the value nearest to it that the bounds (and an integer ``multipleOf``) allow."""
    low, high = _bound(schema.get("minimum")), _bound(schema.get("maximum"))
    low_x, high_x = _bound(schema.get("exclusiveMinimum")), _bound(schema.get("exclusiveMaximum"))
    step = 1 if integer else 0.5
    if low_x is not None:
        low = max(low if low is not None else -math.inf, math.floor(low_x) + 1 if integer else low_x + step)
    if high_x is not None:
        high = min(high if high is not None else math.inf, math.ceil(high_x) - 1 if integer else high_x - step)
    value: float = 0
    if low is not None and value < low:
        value = math.ceil(low) if integer else low
    if high is not None and value > high:
        value = math.floor(high) if integer else high
    multiple = schema.get("multipleOf")
    if integer and isinstance(multiple, int) and not isinstance(multiple, bool) and multiple > 0:
        value = -(-int(value) // multiple) * multiple
    return int(value) if integer else float(value)


def _string(schema: dict, name: str) -> str:
    text = STRING_FORMATS.get(str(schema.get("format")), f"mock {name}")
    shortest = min(_int(schema.get("minLength"), 0), MAX_STRING)
    if len(text) < shortest:
        text += "x" * (shortest - len(text))
    longest = schema.get("maxLength")
    if isinstance(longest, int) and not isinstance(longest, bool):
        text = text[:longest]
    return text
