"""Route rules of a virtual model: ``large_when`` items compiled into ``RouteRule`` objects.

Each item is a one-key mapping ``{rule: value}``; values are checked and normalised here once
(header names lowercased, regular expressions compiled) so the router never re-parses them.
Tenant names in ``tenant`` rules are checked against the policy later, with the other references.
"""

from __future__ import annotations

from typing import Any, get_args

from gateway.policy.checkers import (
    BAD,
    BOOLEAN,
    NAME,
    REGEX,
    Checker,
    Invalid,
    as_string,
    build,
    enum,
    integer,
    leaf,
    list_of,
    number,
    string,
)
from gateway.policy.interpolate import UNRESOLVED
from gateway.policy.model import Mode, Route, RouteRule
from gateway.policy.problems import Report, join

RESPONSE_FORMATS = ("json_schema", "json_object", "text")


def _header(value: Any) -> Any:
    if not isinstance(value, dict) or len(value) != 1:
        count = f", got {len(value)}" if isinstance(value, dict) else ""
        raise Invalid(f"expected one {{header-name: value}} pair{count}")
    ((name, expected),) = value.items()
    if expected is UNRESOLVED:
        return BAD  # its missing variable is already reported
    name = as_string(name).strip().lower()
    if not name:
        raise Invalid("header name must not be empty")
    return name, as_string(expected)


RULES: dict[str, Checker] = {
    "prompt_tokens_over": integer(ge=0),
    "has_tools": BOOLEAN,
    "has_images": BOOLEAN,
    "response_format": enum("response format", RESPONSE_FORMATS),
    "header": leaf(_header),
    "tenant": list_of(NAME, nonempty=True),
    "messages_over": integer(ge=0),
    "matches": REGEX,
    "score_over": number(ge=0, le=1),
}


def _rule(item: Any, path: str, report: Report) -> Any:
    if item is UNRESOLVED:
        return BAD
    if not isinstance(item, dict) or len(item) != 1:
        report.error(path, "expected a mapping with exactly one rule, e.g. {has_tools: true}")
        return BAD
    ((kind, raw),) = item.items()
    if kind not in RULES:
        report.error(path, f"unknown rule '{kind}' (known: {', '.join(RULES)})")
        return BAD
    value = RULES[kind](raw, join(path, kind), report)
    if value is BAD:
        return BAD
    if kind == "matches":
        return RouteRule(kind, value.pattern, pattern=value)
    return RouteRule(kind, value)


ROUTE = build(
    Route,
    {
        "small": string(nonempty=True),
        "large": string(nonempty=True),
        "large_when": list_of(_rule),
        "mode": enum("mode", get_args(Mode)),
    },
    required=("small", "large"),
)
