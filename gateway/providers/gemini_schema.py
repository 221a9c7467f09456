"""JSON Schema -> the OpenAPI 3.0 subset Gemini accepts for ``responseSchema`` and function parameters.

Gemini's ``Schema`` knows ``type`` (one, upper case), ``format``, ``description``, ``nullable``,
``enum`` (strings), ``properties``, ``required``, ``items``, ``anyOf``, ``propertyOrdering`` and the
usual bounds. Everything else (``additionalProperties``, ``$schema``, ``patternProperties``...) is
dropped; ``$ref`` into ``$defs``/``definitions`` is inlined (a recursive schema is refused), a type
list with ``null`` becomes ``nullable``, ``const`` a one-value enum and ``oneOf`` an ``anyOf``.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import invalid

TYPES = {"string": "STRING", "number": "NUMBER", "integer": "INTEGER", "boolean": "BOOLEAN",
         "array": "ARRAY", "object": "OBJECT"}
KEPT = ("format", "title", "description", "minimum", "maximum", "minItems", "maxItems", "minLength",
        "maxLength", "pattern", "minProperties", "maxProperties", "default", "example")
MAX_DEPTH = 32


def to_gemini_schema(schema: Any, param: str) -> dict[str, Any]:
    """A converted copy of ``schema``; ``param`` names the field in a 400 when it can't be converted."""
    if not isinstance(schema, dict):
        raise invalid("a JSON schema must be an object", param=param)
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    return _convert(schema, defs, param, ())


def _convert(schema: Any, defs: dict[str, Any], param: str, seen: tuple[str, ...]) -> dict[str, Any]:
    if schema is True or schema == {}:
        return {}
    if not isinstance(schema, dict) or len(seen) > MAX_DEPTH:
        raise invalid("this JSON schema cannot be converted for Gemini", param=param)
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen or name not in defs:
            raise invalid(f"schema reference {ref!r} is recursive or unknown; Gemini needs it inlined",
                          param=param)
        return _convert(defs[name], defs, param, (*seen, name))
    out: dict[str, Any] = {k: schema[k] for k in KEPT if k in schema}
    _type(schema, out)
    if "const" in schema:
        out["enum"] = [str(schema["const"])]
        out.setdefault("type", "STRING")
    elif isinstance(schema.get("enum"), list):
        values = [v for v in schema["enum"] if v is not None]
        if len(values) < len(schema["enum"]):
            out["nullable"] = True
        out["enum"] = [str(v) for v in values]
        out["type"] = "STRING"  # Gemini enums are strings
    if isinstance(schema.get("properties"), dict) and schema["properties"]:
        out["properties"] = {name: _convert(sub, defs, f"{param}.properties.{name}", seen)
                             for name, sub in schema["properties"].items()}
        required = [r for r in schema.get("required") or [] if r in out["properties"]]
        if required:
            out["required"] = required
        out.setdefault("type", "OBJECT")
    if "items" in schema and isinstance(schema["items"], dict):
        out["items"] = _convert(schema["items"], defs, f"{param}.items", seen)
        out.setdefault("type", "ARRAY")
    variants = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(variants, list):
        _any_of(variants, defs, param, seen, out)
    for sub in schema.get("allOf") or []:  # merge: properties and required add up
        merged = _convert(sub, defs, f"{param}.allOf", seen)
        props = {**out.get("properties", {}), **merged.pop("properties", {})}
        required = [*out.get("required", []), *merged.pop("required", [])]
        out = {**merged, **out}
        if props:
            out["properties"] = props
        if required:
            out["required"] = required
    return out


def _type(schema: dict[str, Any], out: dict[str, Any]) -> None:
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if isinstance(kind, str) else []
    if "null" in kinds or schema.get("nullable") is True:
        out["nullable"] = True
    named = [TYPES[k] for k in kinds if k in TYPES]
    if len(named) == 1:
        out["type"] = named[0]
    elif len(named) > 1:
        out["anyOf"] = [{"type": k} for k in named]


def _any_of(variants: list[Any], defs: dict[str, Any], param: str, seen: tuple[str, ...],
            out: dict[str, Any]) -> None:
    """``anyOf: [X, {type: null}]`` is a nullable X; other unions stay unions."""
    real = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
    if len(real) < len(variants):
        out["nullable"] = True
    converted = [_convert(v, defs, f"{param}.anyOf[{i}]", seen) for i, v in enumerate(real)]
    if len(converted) == 1:
        for key, value in converted[0].items():
            out.setdefault(key, value)
    elif converted:
        out["anyOf"] = converted
