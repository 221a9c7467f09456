"""A small JSON Schema validator: the subset structured outputs use (OpenAI's strict mode and kin).

Checks ``type``, ``enum``, ``const``, ``properties``, ``required``, ``additionalProperties``,
``items``, ``anyOf``/``oneOf``/``allOf``, lengths, bounds and local ``$ref`` (``#/$defs/...``).
Keywords it does not know are ignored, so it never rejects what a fuller validator would accept
for that reason alone.
"""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}
MAX_DEPTH = 64


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    expected = _TYPES.get(kind)
    return expected is None or isinstance(value, expected)


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    node: Any = root
    for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else ():
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) and ref.startswith("#") else {}


def problem(value: Any, schema: Any, root: Any = None, path: str = "$", depth: int = 0) -> str | None:
    """The first way ``value`` breaks ``schema`` ("$.a.b: ..."), or None when it is valid."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    root = schema if root is None else root
    if isinstance(schema.get("$ref"), str):
        return problem(value, _resolve(schema["$ref"], root), root, path, depth + 1)
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else None
    if kinds is not None and not any(_is(value, k) for k in kinds):
        return f"{path}: expected {' or '.join(kinds)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: not one of the allowed values"
    if "const" in schema and value != schema["const"]:
        return f"{path}: not the required constant"
    for check in (_combined, _object, _array, _scalar):
        found = check(value, schema, root, path, depth)
        if found:
            return found
    return None


def _combined(value: Any, schema: dict, root: Any, path: str, depth: int) -> str | None:
    for sub in schema.get("allOf") or ():
        if found := problem(value, sub, root, path, depth + 1):
            return found
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and all(
                problem(value, sub, root, path, depth + 1) for sub in options):
            return f"{path}: matches none of {key}"
    return None


def _object(value: Any, schema: dict, root: Any, path: str, depth: int) -> str | None:
    if not isinstance(value, dict):
        return None
    for name in schema.get("required") or ():
        if name not in value:
            return f"{path}: missing required property '{name}'"
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in props:
            sub = props[name]
        elif extra is False:
            return f"{path}: unexpected property '{name}'"
        else:
            sub = extra if isinstance(extra, dict) else None
        if sub is not None and (found := problem(item, sub, root, f"{path}.{name}", depth + 1)):
            return found
    return None


def _array(value: Any, schema: dict, root: Any, path: str, depth: int) -> str | None:
    if not isinstance(value, list):
        return None
    if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
        return f"{path}: fewer than {schema['minItems']} items"
    if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
        return f"{path}: more than {schema['maxItems']} items"
    items = schema.get("items")
    for i, item in enumerate(value if isinstance(items, dict) else ()):
        if found := problem(item, items, root, f"{path}[{i}]", depth + 1):
            return found
    return None


def _scalar(value: Any, schema: dict, root: Any, path: str, depth: int) -> str | None:
    if isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            return f"{path}: shorter than {schema['minLength']}"
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            return f"{path}: longer than {schema['maxLength']}"
    elif isinstance(value, int | float) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if isinstance(low, int | float) and value < low:
            return f"{path}: below the minimum"
        if isinstance(high, int | float) and value > high:
            return f"{path}: above the maximum"
    return None
