"""Reading a YAML file for validation: the data, the line of every key, and the keys written twice.

PyYAML's SafeLoader lets a repeated mapping key silently replace the first (two ``bemsadmin:``
credentials load and the second wins); here each repetition is reported with both lines, and every
key's line is kept so that a validation error can say ``FILE:LINE: KEY: REASON``. Used by the
configuration file and the web config file alike.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import ConfigIssue

Loc = tuple[str | int, ...]  # a path into the data: mapping keys and sequence indexes, as pydantic's ``loc``

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Duplicate:
    loc: Loc  # the repeated key's path
    first_line: int
    line: int


@dataclass
class YamlDocument:
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)  # a key's line (a sequence item's first line)
    duplicates: list[Duplicate] = field(default_factory=list)

    def line_of(self, loc: Loc) -> int | None:
        """The line of ``loc``, or of its nearest enclosing key (a missing key is reported where its
        mapping is)."""
        for end in range(len(loc), -1, -1):
            if (line := self.lines.get(tuple(loc[:end]))) is not None:
                return line
        return None

    def duplicate_issues(self, file: str, key_path: Any) -> list[ConfigIssue]:
        return [
            ConfigIssue(file, f"duplicate key (first at line {d.first_line})", key_path(d.loc), d.line)
            for d in self.duplicates
        ]


class LineLoader(yaml.SafeLoader):
    """SafeLoader that also records where each key is and which keys a mapping repeats."""

    def read(self) -> YamlDocument:
        node = self.get_single_node()
        if node is None:
            return YamlDocument(None)
        document = YamlDocument(None, {(): node.start_mark.line + 1})
        self._walk(node, (), document, set())
        document.data = self.construct_document(node)
        return document

    def _walk(self, node: yaml.Node, loc: Loc, document: YamlDocument, active: set[int]) -> None:
        if id(node) in active:  # a recursive alias
            return
        active.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_lines: dict[Hashable, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, Hashable) or key is None:
                    continue
                line = key_node.start_mark.line + 1
                child = (*loc, str(key))  # a mapping key, even 1234, is a key: only sequence indexes are ints
                if key in first_lines:
                    document.duplicates.append(Duplicate(child, first_lines[key], line))
                else:
                    first_lines[key] = line
                document.lines[child] = line  # the data holds the last one: its errors point there
                self._walk(value_node, child, document, active)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                document.lines.setdefault((*loc, index), item.start_mark.line + 1)
                self._walk(item, (*loc, index), document, active)
        active.discard(id(node))


def read_yaml(text: str) -> YamlDocument:
    """Parse one YAML document; raises ``yaml.YAMLError`` for a syntax error."""
    loader = LineLoader(text)
    try:
        return loader.read()
    finally:
        loader.dispose()
