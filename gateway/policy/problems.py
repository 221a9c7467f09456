"""Problems found in a policy file, and the report that collects them with their line numbers.

Every check records a problem instead of raising, so one run of ``gateway validate`` shows every
mistake in a file, each as ``FILE:LINE: key.path: what is wrong``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or, as a warning, suspicious) in a policy file."""

    file: str
    line: int | None
    path: str  # dotted key path, e.g. ``models.large.deployments[1].provider``; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(Exception):
    """A policy file that cannot be used; ``problems`` lists everything wrong with it, in file order."""

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings or ())
        super().__init__("\n".join(str(p) for p in self.problems))


def join(path: str, key: object) -> str:
    """The key path of ``key`` inside ``path``."""
    return f"{path}.{key}" if path else str(key)


def _parent(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


class Report:
    """Collects the problems and warnings of one file; knows the line of every key path seen."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def line_of(self, path: str) -> int | None:
        """The line of ``path``, or of its nearest ancestor present in the file (for absent keys)."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = _parent(path)
        return self.lines.get("")

    def has_problem_under(self, path: str) -> bool:
        """Whether ``path`` or a key below it was already reported (to avoid follow-on noise)."""
        return any(p.path == path or p.path.startswith((path + ".", path + "[")) for p in self.problems)

    def error(self, path: str, message: str, line: int | None = None) -> None:
        self.problems.append(Problem(self.file, line or self.line_of(path), path, message))

    def warn(self, path: str, message: str, line: int | None = None) -> None:
        self.warnings.append(Problem(self.file, line or self.line_of(path), path, message))

    @staticmethod
    def in_file_order(problems: list[Problem]) -> list[Problem]:
        """Stable sort by line, so output reads top to bottom; problems without a line go first."""
        return sorted(problems, key=lambda p: p.line or 0)
