"""The local guardrail kinds: what each finds in a text, turned into a verdict by the guardrail's action.

A ``Finding`` is the verdict vocabulary of metrics and logs: ``allow``, ``block``, ``redact``,
``modify`` (a webhook's replacement body), ``flag`` (found, let through), for webhooks and judges
that failed ``error_allow`` / ``error_block`` (``on_error``), for a judge whose budget is spent
``over_budget_allow`` / ``over_budget_block`` (``on_error`` too), and ``modify_unapplied`` for a
webhook's replacement of streamed text that was not held (``stream: end`` or ``window``): the text
went as it was. Messages never quote a rule's content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.guardrails.schema import problem
from gateway.guardrails.text import Rewrite
from gateway.observability.redact import CUSTOM, Redactor
from gateway.policy.model import Guardrail

BLOCKS = frozenset({"block", "error_block", "over_budget_block"})  # verdicts that stop the request or answer
CHANGES = BLOCKS | {"redact", "modify"}  # verdicts that change what passes


@dataclass(slots=True)
class Finding:
    verdict: str
    rewrite: Rewrite | None = None  # redact: applied to every user-written string
    message: str | None = None  # block: the webhook's own words
    body: dict[str, Any] | None = None  # modify: the replacement body

    @property
    def changes(self) -> bool:
        return self.verdict in CHANGES

    @property
    def blocks(self) -> bool:
        return self.verdict in BLOCKS


ALLOW = Finding("allow")


def _acted(guard: Guardrail, rewrite: Rewrite | None = None) -> Finding:
    if guard.action == "redact":
        return Finding("redact", rewrite=rewrite)
    return Finding(guard.action)


def deny_rewrite(guard: Guardrail) -> Rewrite:
    """Replace each pattern match and keyword (any case) with the redaction marker."""
    words = [re.compile(re.escape(k), re.IGNORECASE) for k in guard.keywords]

    def rewrite(text: str) -> str:
        for pattern in (*guard.patterns, *words):
            text = pattern.sub(CUSTOM, text)
        return text

    return rewrite


def check_pii(guard: Guardrail, text: str, redactor: Redactor) -> Finding:
    """PII or a known secret, as the audit log's redactors find them."""
    return _acted(guard, redactor.text) if redactor.text(text) != text else ALLOW


def check_deny(guard: Guardrail, text: str) -> Finding:
    lowered = text.lower()
    hit = any(p.search(text) for p in guard.patterns) or any(k.lower() in lowered for k in guard.keywords)
    return _acted(guard, deny_rewrite(guard)) if hit else ALLOW


def check_size(guard: Guardrail, text: str, tokens: int) -> Finding:
    over_chars = guard.max_chars is not None and len(text) > guard.max_chars
    over_tokens = guard.max_tokens is not None and tokens > guard.max_tokens
    return _acted(guard) if over_chars or over_tokens else ALLOW


def expected_schema(body: dict[str, Any]) -> tuple[bool, Any]:
    """(does the request ask for JSON, its schema or None) from the chat ``response_format``."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_schema", "json_object"):
        return False, None
    spec = fmt.get("json_schema") if fmt.get("type") == "json_schema" else None
    return True, spec.get("schema") if isinstance(spec, dict) else None


def check_json(guard: Guardrail, text: str, request: dict[str, Any]) -> Finding:
    """The answer must be JSON, valid against the request's schema, when the request asked for JSON."""
    wants_json, schema = expected_schema(request)
    if not wants_json:
        return ALLOW
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _acted(guard)
    if schema is None:
        return ALLOW if isinstance(value, dict) else _acted(guard)
    return _acted(guard) if problem(value, schema) is not None else ALLOW
