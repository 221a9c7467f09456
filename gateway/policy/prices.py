"""The default price table (``gateway/data/prices.yaml``) and the policy's ``price:`` syntax.

A model's ``price`` is either written out (``{input, output, cached_input, cache_write, reasoning}``), a table
entry by name (``price: gpt-4o-mini``), or a table entry with overrides
(``price: {table: gpt-4o-mini, output: 0.5}``). The table is read once per process.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from pathlib import Path
from typing import Any

import yaml

from gateway.policy import model as m
from gateway.policy.checkers import BAD, describe, nullable, number, string
from gateway.policy.checkers import fields as fields_of
from gateway.policy.interpolate import UNRESOLVED
from gateway.policy.problems import Report, join

TABLE_PATH = Path(__file__).resolve().parents[1] / "data" / "prices.yaml"  # inside the package
_FIELDS = ("input", "output", "cached_input", "cache_write", "reasoning")
_PRICE_FIELDS_AND_TABLE = (*_FIELDS, "table")


@functools.cache
def default_prices() -> dict[str, m.Price]:
    """Table entry name -> Price."""
    raw = yaml.safe_load(TABLE_PATH.read_text(encoding="utf-8")) or {}
    return {str(name): m.Price(**{k: float(v) for k, v in entry.items() if k in _FIELDS})
            for name, entry in (raw.get("prices") or {}).items()}


def lookup(name: str) -> m.Price | None:
    return default_prices().get(name)


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, list(default_prices()), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else "see gateway/data/prices.yaml"
    return f"unknown price table entry '{name}' ({hint})"


_AMOUNT = number(ge=0)
_PRICE_KEYS = fields_of({
    "table": string(nonempty=True),
    "input": _AMOUNT,
    "output": _AMOUNT,
    "cached_input": nullable(_AMOUNT),
    "cache_write": nullable(_AMOUNT),
    "reasoning": nullable(_AMOUNT),
})


def _entry(name: str, path: str, report: Report) -> m.Price | None:
    price = lookup(name)
    if price is None:
        report.error(path, _unknown(name))
    return price


def check_price(value: Any, path: str, report: Report) -> Any:
    """Checker for ``models.<name>.price``: a table entry name, or a mapping (``table`` optional)."""
    if value is UNRESOLVED:
        return BAD
    if isinstance(value, str):
        return _entry(str(value), path, report) or BAD
    if not isinstance(value, dict):
        report.error(path, f"expected a price table entry name or a mapping (input, output, ...), "
                           f"got {describe(value)}")
        return BAD
    values = _PRICE_KEYS(value, path, report)
    if values is BAD:
        return BAD
    base: dict[str, Any] = {}
    if "table" in values:
        entry = _entry(values.pop("table"), join(path, "table"), report)
        if entry is None:
            return BAD
        base = dataclasses.asdict(entry)
    merged = {**base, **values}
    missing = [key for key in ("input", "output") if key not in merged]
    mistyped = any(key not in _PRICE_FIELDS_AND_TABLE for key in value)  # already reported
    for key in missing:
        if key not in value and not mistyped:  # absent, not merely invalid (that was reported already)
            report.error(path, f"missing required key '{key}'")
    return BAD if missing else m.Price(**merged)
