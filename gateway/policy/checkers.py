"""Small composable value checkers for pass 3 (types, ranges, enums, unknown keys).

A checker is ``check(value, path, report) -> checked value | BAD``. It records every problem it
finds in the report rather than raising, so a whole file is checked in one run. Leaf checkers are
plain functions raising ``Invalid``; ``leaf`` turns them into checkers.
"""

from __future__ import annotations

import datetime
import difflib
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from gateway.policy.interpolate import UNRESOLVED, EnvStr
from gateway.policy.problems import Report, join


class _Bad:
    def __repr__(self) -> str:
        return "BAD"


BAD: Any = _Bad()  # "invalid, already reported": callers drop the value and carry on
Checker = Callable[[Any, str, Report], Any]
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class Invalid(Exception):
    """Raised by leaf checks; the message becomes the problem text."""


def describe(value: Any, secret: bool = False) -> str:
    """How a wrong value is shown in a message; secrets are named by type only."""
    kind = _kind(value)
    if secret or kind in ("null", "list", "mapping"):
        return kind
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string '{shown}'"
    return f"{kind} {value}"


def _kind(value: Any) -> str:
    for types, name in ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
                        (dict, "mapping"), (list, "list"), (datetime.date, "date")):
        if isinstance(value, types):
            return name
    return "null" if value is None else type(value).__name__


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(number)


def leaf(fn: Callable[[Any], Any]) -> Checker:
    def check(value: Any, path: str, report: Report) -> Any:
        if value is UNRESOLVED:
            return BAD
        try:
            return fn(value)
        except Invalid as exc:
            report.error(path, str(exc))
            return BAD

    return check


def _range(value: float, ge: float | None, gt: float | None, le: float | None) -> None:
    if (ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le):
        return
    if le is not None and ge is not None:
        rule = f"between {_fmt(ge)} and {_fmt(le)}"
    elif le is not None and gt is not None:
        rule = f"greater than {_fmt(gt)} and at most {_fmt(le)}"
    elif gt is not None:
        rule = f"greater than {_fmt(gt)}"
    elif ge == 0:
        raise Invalid(f"must not be negative, got {_fmt(value)}")
    else:
        rule = f"at least {_fmt(ge)}" if ge is not None else f"at most {_fmt(le or 0)}"
    raise Invalid(f"must be {rule}, got {_fmt(value)}")


def _env_number(value: EnvStr, expected: str) -> float:
    """Numbers may come from a whole-value ``${VAR}``; anything else in a string stays a string."""
    try:
        number = float(value.strip())
    except ValueError:
        raise Invalid(f"expected {expected}, got {describe(value)}") from None
    if not math.isfinite(number):
        raise Invalid(f"expected {expected}, got {describe(value)}")
    return int(value.strip()) if re.fullmatch(r"\s*[+-]?\d+\s*", value) else number


def integer(ge: float | None = None, gt: float | None = None, le: float | None = None) -> Checker:
    def check(value: Any) -> int:
        given = value
        if isinstance(value, EnvStr):
            value = _env_number(value, "integer")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected integer, got {describe(value)}")
        if isinstance(value, float) and not value.is_integer():
            raise Invalid(f"expected integer, got {describe(given)}")
        _range(value, ge, gt, le)
        return int(value)

    return leaf(check)


def number(ge: float | None = None, gt: float | None = None, le: float | None = None) -> Checker:
    def check(value: Any) -> float:
        if isinstance(value, EnvStr):
            value = _env_number(value, "number")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected number, got {describe(value)}")
        if not math.isfinite(value):
            raise Invalid(f"must be a finite number, got {value}")
        _range(value, ge, gt, le)
        return float(value)

    return leaf(check)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    hint = " (variables give strings; only numbers are converted)" if isinstance(value, EnvStr) else ""
    raise Invalid(f"expected boolean, got {describe(value)}{hint}")


BOOLEAN = leaf(_boolean)


def as_string(value: Any, secret: bool = False) -> str:
    """A plain ``str``; scalars YAML typed otherwise (``4``, ``2024-06-01``) get a "quote it" hint."""
    if isinstance(value, str):
        return str(value)
    hint = "" if value is None or isinstance(value, dict | list) else " (quote it)"
    raise Invalid(f"expected string, got {describe(value, secret)}{hint}")


def string(nonempty: bool = False, secret: bool = False) -> Checker:
    def check(value: Any) -> str:
        text = as_string(value, secret)
        if nonempty and not text:
            raise Invalid("must not be empty")
        return text

    return leaf(check)


def enum(label: str, choices: Iterable[str]) -> Checker:
    known = tuple(choices)

    def check(value: Any) -> str:
        text = as_string(value)
        if text not in known:
            raise Invalid(f"unknown {label} '{text}' (known: {', '.join(known)})")
        return text

    return leaf(check)


def _regex(value: Any) -> re.Pattern[str]:
    try:
        return re.compile(as_string(value))
    except re.error as exc:
        raise Invalid(f"invalid regular expression: {exc}") from None


REGEX = leaf(_regex)


def check_name(value: Any) -> str:
    """Names of providers, models, tenants: safe as metric labels and in key paths."""
    text = as_string(value)
    if not NAME_RE.match(text):
        raise Invalid(f"invalid name '{text}' (use letters, digits, '_', '.', '-')")
    return text


NAME = leaf(check_name)
_STRING_KEY = leaf(as_string)


def nullable(inner: Checker) -> Checker:
    """``null`` means "not set" (e.g. a tenant removing a limit it would inherit)."""

    def check(value: Any, path: str, report: Report) -> Any:
        return None if value is None else inner(value, path, report)

    return check


def then(inner: Checker, fn: Callable[[Any], Any]) -> Checker:
    """Post-process a valid result, e.g. a list into a tuple."""

    def check(value: Any, path: str, report: Report) -> Any:
        result = inner(value, path, report)
        return BAD if result is BAD else fn(result)

    return check


def _expect(value: Any, types: type | tuple[type, ...], name: str, path: str, report: Report) -> bool:
    if isinstance(value, types):
        return True
    if value is not UNRESOLVED:
        report.error(path, f"expected {name}, got {describe(value)}")
    return False


def list_of(item: Checker, nonempty: bool = False, indexed: bool = False) -> Checker:
    """A list; returns a tuple of the valid items (of ``(index, item)`` pairs when ``indexed``)."""

    def check(value: Any, path: str, report: Report) -> Any:
        if not _expect(value, list, "list", path, report):
            return BAD
        if nonempty and not value:
            report.error(path, "must not be empty")
        results = ((i, item(v, f"{path}[{i}]", report)) for i, v in enumerate(value))
        return tuple((i, r) if indexed else r for i, r in results if r is not BAD)

    return check


def map_of(item: Checker, names: bool = True) -> Checker:
    """A mapping of names to values; returns a dict of the valid entries."""

    def check(value: Any, path: str, report: Report) -> Any:
        if not _expect(value, dict, "mapping", path, report):
            return BAD
        out: dict[str, Any] = {}
        for key, raw in value.items():
            sub = join(path, key)
            name = (NAME if names else _STRING_KEY)(key, sub, report)
            result = item(raw, sub, report)
            if name is not BAD and result is not BAD:
                out[name] = result
        return out

    return check


def unknown_key(key: Any, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
    return f"unknown key '{key}' ({hint})"


def fields(spec: dict[str, Checker], required: Iterable[str] = ()) -> Checker:
    """A mapping with a fixed set of keys; returns a dict of the valid keys present (no defaults)."""
    required = tuple(required)

    def check(value: Any, path: str, report: Report) -> Any:
        if not _expect(value, dict, "mapping", path, report):
            return BAD
        out: dict[str, Any] = {}
        for key, raw in value.items():
            sub = join(path, key)
            if key not in spec:
                report.error(sub, unknown_key(key, spec))
                continue
            result = spec[key](raw, sub, report)
            if result is not BAD:
                out[key] = result
        for key in required:
            if key not in value:
                report.error(path, f"missing required key '{key}'")
        return out

    check.keys = tuple(spec)  # type: ignore[attr-defined]  # the accepted keys, for docs and tests
    return check


def build(cls: type, spec: dict[str, Checker], required: Iterable[str] = ()) -> Checker:
    """``fields`` then ``cls(**values)``; BAD when a required key is missing or invalid."""
    required = tuple(required)
    checker = fields(spec, required)

    def check(value: Any, path: str, report: Report) -> Any:
        values = checker(value, path, report)
        if values is BAD or any(key not in values for key in required):
            return BAD
        return cls(**values)

    check.keys = checker.keys  # type: ignore[attr-defined]
    return check
