"""Pass 2: replace ``${VAR}`` and ``${VAR:-default}`` in string values, after YAML parsing.

Interpolating parsed strings (never the raw text) means an environment value can never inject
structure: it only ever becomes (part of) one string. A value that is exactly one reference is
returned as ``EnvStr`` so numeric fields, and only those, may convert it (``rpm: ${RPM:-600}``).
The same walk records the line of every key path and reports duplicate keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.policy.problems import Report, join
from gateway.policy.yamlsrc import LineList, LineMap

MAX_NODES = 100_000  # after alias expansion; guards against "billion laughs" documents

_REF = re.compile(r"\$(\$\{)|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]{0,40}\}?")
_WHOLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class EnvStr(str):
    """A string value that came entirely from one ``${...}`` reference."""

    __slots__ = ()


class _Unresolved:
    """Stands for a value whose interpolation failed (already reported): checks skip it quietly."""

    def __repr__(self) -> str:
        return "UNRESOLVED"


UNRESOLVED: Any = _Unresolved()


class _Walk:
    def __init__(self, env: Mapping[str, str], report: Report) -> None:
        self.env = env
        self.report = report
        self.nodes = 0
        self.active: set[int] = set()

    def value(self, value: Any, path: str) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLarge
        if isinstance(value, str):
            return self.string(value, path)
        if not isinstance(value, LineMap | LineList):
            return value
        if id(value) in self.active:
            self.report.error(path, "recursive structure (a YAML alias refers to its own parent)")
            return UNRESOLVED
        self.active.add(id(value))
        try:
            return self.mapping(value, path) if isinstance(value, LineMap) else self.items(value, path)
        finally:
            self.active.discard(id(value))

    def mapping(self, data: LineMap, path: str) -> dict[Any, Any]:
        for key, line, first in data.duplicates:
            self.report.error(join(path, key), f"duplicate key '{key}' (first on line {first})", line)
        out: dict[Any, Any] = {}
        for key, item in data.items():
            sub = join(path, key)
            self.report.lines.setdefault(sub, data.key_lines.get(key, data.line))
            out[key] = self.value(item, sub)
        return out

    def items(self, data: LineList, path: str) -> list[Any]:
        out: list[Any] = []
        for i, item in enumerate(data):
            sub = f"{path}[{i}]"
            self.report.lines.setdefault(sub, data.item_lines[i])
            out.append(self.value(item, sub))
        return out

    def string(self, text: str, path: str) -> Any:
        if "$" not in text:
            return text
        failed = False

        def sub(m: re.Match[str]) -> str:
            nonlocal failed
            escaped, name, default = m.groups()
            if escaped:
                return escaped
            if name is None:
                self.report.error(path, f"invalid variable reference '{m.group(0)}' (use ${{NAME}} or ${{NAME:-default}})")
            elif default is not None and "${" in default:
                self.report.error(path, f"nested variable reference in the default of '{name}' is not supported")
            elif self.env.get(name):
                return self.env[name]
            elif default is not None:
                return default
            elif name in self.env:
                return ""  # set but empty, and no default asked for
            else:
                self.report.error(path, f"missing environment variable '{name}'")
            failed = True
            return ""

        result = _REF.sub(sub, text)
        if failed:
            return UNRESOLVED
        return EnvStr(result) if _WHOLE.fullmatch(text) else result


class _TooLarge(Exception):
    pass


def interpolate(data: Any, env: Mapping[str, str], report: Report) -> Any:
    """A plain copy of ``data`` with variables replaced; records key lines into ``report.lines``."""
    if isinstance(data, LineMap | LineList):
        report.lines[""] = data.line
    try:
        return _Walk(env, report).value(data, "")
    except _TooLarge:
        report.error("", f"document too large (more than {MAX_NODES} values after expanding aliases)")
        return UNRESOLVED
