"""Small/large routing decisions: which ``large_when`` rule, if any, matches a request.

Rules arrive compiled from the policy (``gateway.policy.rules``): header names lowercased, regular
expressions compiled. Matching reads only facts already on the request context; the complexity
score, the one costly fact, is computed lazily and only when a ``score_over`` rule is reached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.policy.model import Route, RouteRule
from gateway.routing.complexity import complexity_score, content_text, user_text

IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


@dataclass(slots=True)
class RouteFacts:
    """What rules look at; built from the request context (or by hand in unit tests)."""

    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names, or a case-insensitive map
    tenant: str = ""
    prompt_tokens: int = 0
    _score: float | None = None

    @property
    def score(self) -> float:
        if self._score is None:
            self._score = complexity_score(user_text(self.body))
        return self._score

    def last_user_message(self) -> str:
        for msg in reversed(self.body.get("messages") or ()):
            if isinstance(msg, dict) and msg.get("role") == "user":
                return content_text(msg.get("content"))
        prompt = self.body.get("prompt")
        return prompt if isinstance(prompt, str) else ""


def _has_tools(facts: RouteFacts) -> bool:
    return bool(facts.body.get("tools") or facts.body.get("functions"))


def _has_images(facts: RouteFacts) -> bool:
    for msg in facts.body.get("messages") or ():
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in IMAGE_PARTS for p in content):
            return True
    return False


def _response_format(facts: RouteFacts) -> str | None:
    fmt = facts.body.get("response_format")
    return fmt.get("type") if isinstance(fmt, dict) else None


def _header(facts: RouteFacts, value: tuple[str, str]) -> bool:
    name, expected = value
    got = facts.headers.get(name)
    return got is not None and got.strip().lower() == expected.strip().lower()


def _messages(facts: RouteFacts) -> int:
    messages = facts.body.get("messages")
    return len(messages) if isinstance(messages, list) else 0


_MATCHERS: dict[str, Callable[[RouteRule, RouteFacts], bool]] = {
    "prompt_tokens_over": lambda r, f: f.prompt_tokens > r.value,
    "has_tools": lambda r, f: _has_tools(f) == r.value,
    "has_images": lambda r, f: _has_images(f) == r.value,
    "response_format": lambda r, f: _response_format(f) == r.value,
    "header": lambda r, f: _header(f, r.value),
    "tenant": lambda r, f: f.tenant in r.value,
    "messages_over": lambda r, f: _messages(f) > r.value,
    "matches": lambda r, f: r.pattern is not None and r.pattern.search(f.last_user_message()) is not None,
    "score_over": lambda r, f: f.score > r.value,
}


def rule_matches(rule: RouteRule, facts: RouteFacts) -> bool:
    matcher = _MATCHERS.get(rule.kind)
    return matcher is not None and matcher(rule, facts)


def first_match(route: Route, facts: RouteFacts) -> RouteRule | None:
    """The first ``large_when`` rule that matches (rules are checked in policy order), or None."""
    for rule in route.large_when:
        if rule_matches(rule, facts):
            return rule
    return None
