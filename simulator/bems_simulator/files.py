"""File writing with the permissions and atomicity the simulator's state directory needs."""

from __future__ import annotations

import os
from pathlib import Path


def write_private_file(path: Path, content: bytes) -> None:
    """Write ``content`` readable by the owner only, tightening the mode if ``path`` already exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(content)


def write_atomically(path: Path, content: str) -> None:
    """Replace ``path`` in one step so that a reader polling for it never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(content, encoding="utf-8")
    os.replace(partial, path)
