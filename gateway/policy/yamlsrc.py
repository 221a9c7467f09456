"""Pass 1: parse YAML safely while remembering where every key and list item sits.

PyYAML's ``safe_load`` drops positions, but error messages must read ``file:line: key.path: ...``.
A ``SafeLoader`` subclass builds mappings and lists as ``dict``/``list`` subclasses that carry the
line of each key and item. Duplicate keys, which YAML silently resolves to the last one, are
recorded so the checker can report them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from gateway.policy.problems import Report

_MERGE_TAG = "tag:yaml.org,2002:merge"


class LineMap(dict):
    """A mapping with ``key_lines`` (key -> line) and ``duplicates`` ([(key, line, first_line)])."""

    def __init__(self) -> None:
        super().__init__()
        self.line = 0
        self.key_lines: dict[Any, int] = {}
        self.duplicates: list[tuple[Any, int, int]] = []


class LineList(list):
    """A list with ``item_lines`` (index -> line)."""

    def __init__(self) -> None:
        super().__init__()
        self.line = 0
        self.item_lines: list[int] = []


class _LineLoader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) whose mappings and lists know their line numbers."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> Iterator[LineMap]:
    data = LineMap()
    data.line = node.start_mark.line + 1
    yield data  # yielded first so that anchors/aliases referring to this node resolve
    own = {id(k) for k, _ in node.value if k.tag != _MERGE_TAG}
    loader.flatten_mapping(node)  # resolves ``<<: *anchor`` merge keys
    seen: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=False)
        if isinstance(key, bool):  # YAML 1.1 reads a plain ``on:`` key as true: keys stay the word written
            key = key_node.value
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "found a key that is not a plain value", key_node.start_mark
            ) from None
        line = key_node.start_mark.line + 1
        if id(key_node) in own:
            if key in seen:
                data.duplicates.append((key, line, seen[key]))
            else:
                seen[key] = line
        data[key] = loader.construct_object(value_node, deep=False)
        data.key_lines[key] = line


def _construct_list(loader: _LineLoader, node: yaml.SequenceNode) -> Iterator[LineList]:
    data = LineList()
    data.line = node.start_mark.line + 1
    yield data
    for item in node.value:
        data.append(loader.construct_object(item, deep=False))
        data.item_lines.append(item.start_mark.line + 1)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_list)


def parse_yaml(text: str, report: Report) -> Any:
    """The document's data, or None after recording the syntax problem (nothing else can be checked)."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            start = exc.context_mark
            where = f" started on line {start.line + 1}" if start is not None and start is not mark else ""
            detail = f"{exc.problem} ({exc.context}{where})"
        report.error("", f"invalid YAML: {detail}", line)
    except yaml.YAMLError as exc:
        report.error("", f"invalid YAML: {exc}")
    return None
