"""PII and secret redaction for audit records and, per tenant, for what reaches the provider.

Patterns are checked, not just matched, so ordinary numbers survive: a card number must pass the
Luhn check, an IBAN its ISO 13616 mod-97 checksum, and a phone number needs a leading ``+`` or
separators between digit groups (and is not a date or an IPv4 address). Emails, API-key-shaped
tokens and the exact secrets the gateway knows (provider keys, the caller's own key) always go.
Policy regexes (``audit.redact``) run last and replace whole matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IBAN = "[IBAN]"
SECRET = "[SECRET]"
CUSTOM = "[REDACTED]"

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_TOKEN = re.compile(r"\b(?:sk|pk|rk|key)-[A-Za-z0-9_-]{16,}|(?<=Bearer )[A-Za-z0-9._~+/=-]{16,}")
# Each pattern starts with a plain character class and checks what precedes it in a lookbehind right
# after, so the regex engine skips to candidate characters instead of trying every position.
_IBAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,32}")
_CARD = re.compile(r"\d(?<![\d-]\d)(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(
    r"[+(\d](?<![\w+.:/-][+(\d])(?:(?<=\+)\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?|(?<=\()\d{1,4}\)[ .-]?|(?<=\d))"
    r"\d{0,4}(?:[ .-]?\d{1,4}){1,5}(?![\w:/]|[.-]\d)"
)
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_DIGITS = re.compile(r"\d")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(compact: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to numbers, mod 97 == 1."""
    if not 15 <= len(compact) <= 34 or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group())
    return CARD if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group()


def _iban(match: re.Match[str]) -> str:
    """The longest prefix of the match that is a valid IBAN ending on a word boundary."""
    text = match.group()
    ends = [i + 1 for i, ch in enumerate(text) if ch != " "]
    for n in range(min(34, len(ends)), 14, -1):
        end = ends[n - 1]
        if end < len(text) and text[end] != " ":
            continue
        if iban_ok(text[:end].replace(" ", "")):
            return IBAN + text[end:]
    return text


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    digits = len(_DIGITS.findall(text))
    plus = text.startswith("+")
    separated = plus or "(" in text or len(re.findall(r"\d[ .-]+\d", text)) >= 2
    if not separated or not (8 if plus else 9) <= digits <= 15:
        return text
    if _DATE.match(text) or _IPV4.fullmatch(text):
        return text
    return PHONE


@dataclass(frozen=True)
class Redactor:
    """One redaction setup: the built-in patterns, extra regexes and exact secrets to remove."""

    patterns: tuple[re.Pattern[str], ...] = ()
    secrets: tuple[str, ...] = ()

    def with_secrets(self, extra: Iterable[str]) -> Redactor:
        more = tuple(s for s in extra if s and s not in self.secrets)
        return Redactor(self.patterns, self.secrets + more) if more else self

    def text(self, value: str) -> str:
        """``value`` with every PII match and known secret replaced by a ``[KIND]`` marker."""
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, SECRET)
        if "-" in value or "Bearer " in value:
            value = _TOKEN.sub(SECRET, value)
        if "@" in value:
            value = _EMAIL.sub(EMAIL, value)
        if _DIGITS.search(value):
            value = _IBAN.sub(_iban, value)
            value = _CARD.sub(_card, value)
            value = _PHONE.sub(_phone, value)
        for pattern in self.patterns:
            value = pattern.sub(CUSTOM, value)
        return value

    def value(self, data: Any) -> Any:
        """A copy of a JSON value with every string (keys excluded) redacted."""
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, dict):
            return {k: self.value(v) for k, v in data.items()}
        if isinstance(data, list):
            return [self.value(v) for v in data]
        return data


_TEXT_FIELDS = ("messages", "prompt", "input", "instructions", "system")


def redact_request(body: dict[str, Any], redactor: Redactor) -> tuple[dict[str, Any], bool]:
    """The request with its user-written text fields redacted; True when anything changed."""
    out = dict(body)
    changed = False
    for name in _TEXT_FIELDS:
        if name in body:
            new = redactor.value(body[name])
            if new != body[name]:
                out[name] = new
                changed = True
    return (out, True) if changed else (body, False)
