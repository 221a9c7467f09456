"""``gateway validate FILE...``: check policy files without starting anything.

Meant for CI: one line per problem (``FILE:LINE: key.path: what is wrong``), exit status 1 if any
file has a problem. Warnings (e.g. an unpriced model) are shown but do not fail the check.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

from gateway.policy.loader import PolicyError, load_policy


def check_files(paths: list[str], env: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(problem lines, warning lines) over all ``paths``; each file is a whole policy on its own."""
    problems: list[str] = []
    warnings: list[str] = []
    for path in paths:
        try:
            policy = load_policy(path, env)
        except PolicyError as exc:
            problems.extend(str(p) for p in exc.problems)
            warnings.extend(str(w) for w in exc.warnings)
        else:
            warnings.extend(policy.warnings)
    return problems, warnings


def main_validate(paths: list[str], env: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """Print ``ok`` or one line per problem (warnings prefixed ``warning:``); 1 if any problem."""
    out = out or sys.stdout
    problems, warnings = check_files(paths, env)
    for line in warnings:
        print(f"warning: {line}", file=out)
    for line in problems:
        print(line, file=out)
    if problems:
        return 1
    print("ok", file=out)
    return 0
