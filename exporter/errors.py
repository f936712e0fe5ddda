"""Errors that carry enough context for an operator to fix the cause."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    """One thing wrong in a configuration file: ``FILE:LINE: KEY: REASON``, the line and key when known."""

    file: str
    reason: str
    key: str | None = None
    line: int | None = None  # 1-based, as editors count

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


class ConfigError(Exception):
    """A configuration file is unusable: every issue found in it, each naming the file, line, key and reason.

    ``str()`` gives one ``FILE:LINE: KEY: REASON`` line per issue (``FILE: REASON`` when no line or key
    applies), the form printed by ``--config.check`` and logged on a failed reload. ``file``, ``key``,
    ``reason`` and ``line`` are the first issue's.
    """

    def __init__(
        self, file: str, reason: str = "", key: str | None = None, *, line: int | None = None,
        issues: Sequence[ConfigIssue] = (),
    ) -> None:  # fmt: skip
        self.issues: tuple[ConfigIssue, ...] = tuple(issues) or (ConfigIssue(file, reason, key, line),)
        first = self.issues[0]
        self.file, self.key, self.reason, self.line = first.file, first.key, first.reason, first.line
        super().__init__("\n".join(str(issue) for issue in self.issues))
