"""Errors that carry enough context for an operator to fix the cause."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration file is unusable: names the file, the key path and the reason.

    ``str()`` gives ``FILE: KEY: REASON`` (or ``FILE: REASON`` when no key applies), the form
    printed by ``--config.check`` and logged on a failed reload.
    """

    def __init__(self, file: str, reason: str, key: str | None = None) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")
