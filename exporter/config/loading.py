"""Loading the configuration file: a file that does not validate raises :class:`ConfigError` naming the
file, the key path and the reason; nothing is half-applied.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .schema import Config, _KeyedError


def _key_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part) in {"windows", "entra"}:
            continue  # union-branch and validator names are pydantic's, not the user's keys
        else:
            path += f".{part}" if path else str(part)
    return path


def _first_error(err: ValidationError) -> tuple[str, str]:
    detail = err.errors(include_url=False)[0]
    ctx_error = (detail.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _KeyedError):
        # Raised by a nested model's validator, its key is relative to where pydantic found it.
        where = _key_path(tuple(detail["loc"]))
        return (f"{where}.{ctx_error.key}" if where else ctx_error.key), ctx_error.reason
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        message = "unknown key"
    elif detail["type"] == "missing":
        message = "required key is missing"
    elif detail["type"] == "too_short":
        message = "at least one entry is required"
    return _key_path(tuple(detail["loc"])), message


def parse_config(text: str, file: str) -> Config:
    """Validate YAML text; raise ConfigError naming ``file``, the key path and the reason."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(file, f"invalid YAML: {where}{problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(file, "the file must hold a mapping with scenario, credentials and targets")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        key, reason = _first_error(err)
        raise ConfigError(file, reason, key or None) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    file = str(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(file, f"cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(file, "not UTF-8 text") from None
    return parse_config(text, file)
