"""Redaction of realistic PII: what must go, and ordinary text that must survive untouched."""

from __future__ import annotations

import re

import pytest

from gateway.observability.redact import Redactor, iban_ok, luhn_ok, redact_request

R = Redactor()


@pytest.mark.parametrize("text, expected", [
    ("Write to jane.doe+billing@example.co.uk today", "Write to [EMAIL] today"),
    ("cc: J.Smith@corp-mail.example.com, ops@x.io", "cc: [EMAIL], [EMAIL]"),
    ("Call +1 (415) 555-2671 now", "Call [PHONE] now"),
    ("US office 415-555-2671, UK +44 20 7946 0958", "US office [PHONE], UK [PHONE]"),
    ("Mon portable: 06 12 34 56 78.", "Mon portable: [PHONE]."),
    ("Berlin: +49 30 901820", "Berlin: [PHONE]"),
    ("Visa 4111 1111 1111 1111, MC 5500-0000-0000-0004", "Visa [CARD], MC [CARD]"),
    ("amex 378282246310005 ok", "amex [CARD] ok"),
    ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN [IBAN] please"),
    ("pay GB82WEST12345698765432 and FR1420041010050500013M02606.", "pay [IBAN] and [IBAN]."),
    ("my key sk-proj-Ab3dEf6hIj9kLmNoPq12 leaked", "my key [SECRET] leaked"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "Authorization: Bearer [SECRET]"),
])
def test_pii_is_replaced(text: str, expected: str) -> None:
    assert R.text(text) == expected


@pytest.mark.parametrize("text", [
    "Card 4111 1111 1111 1112 fails the Luhn check",  # one digit off: not a card
    "IBAN DE89 3704 0044 0532 0130 01 has a bad checksum",
    "Meeting 2024-01-15 10:30 in room 4.12",
    "Server 192.168.100.200 answered",
    "Order 123456789 shipped; version 3.11.7; year 2024",
    "The price is 1,234,567.89 USD",
    "ids 12-34-56 and 7.5 and 3/4",
    "no personal data at all",
])
def test_ordinary_text_survives(text: str) -> None:
    assert R.text(text) == text


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and iban_ok("GB82WEST12345698765432")
    assert not iban_ok("DE89370400440532013001") and not iban_ok("DE8937040044")


def test_policy_patterns_and_exact_secrets() -> None:
    r = Redactor(patterns=(re.compile(r"ACME-\d{6}"),), secrets=("tenant-key-123",))
    assert r.text("ticket ACME-004211 by tenant-key-123") == "ticket [REDACTED] by [SECRET]"


def test_request_redaction_touches_text_fields_only() -> None:
    body = {"model": "small", "temperature": 0.2, "user": "u-1",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "mail a@b.example"}]},
                         {"role": "assistant", "content": "call 415-555-2671"}]}
    out, changed = redact_request(body, R)
    assert changed
    assert out["messages"][0]["content"][0]["text"] == "mail [EMAIL]"
    assert out["messages"][1]["content"] == "call [PHONE]"
    assert out["model"] == "small" and out["temperature"] == 0.2 and out["user"] == "u-1"
    assert body["messages"][1]["content"] == "call 415-555-2671"  # the original is not mutated
    same, changed = redact_request({"model": "small", "messages": [{"role": "user", "content": "hi"}]}, R)
    assert not changed
