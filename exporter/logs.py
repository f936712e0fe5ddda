"""Logging in the style of Prometheus' own components (go-kit log), with secrets redacted.

``setup_logging(level, fmt)`` sends the root logger to stderr in one of two shapes::

    ts=2026-11-26T00:00:00.000Z level=info logger=exporter.scheduler msg="probe finished" target=onprem-ews
    {"ts":"2026-11-26T00:00:00.000Z","level":"info","logger":"exporter.scheduler","msg":"probe finished",...}

Structured fields are passed as a mapping under the ``fields`` key of ``extra``::

    logger.info("probe finished", extra={"fields": {"target": "onprem-ews", "check": "tls"}})

They follow ``msg`` in the order given. A field named like a built-in key (``ts``, ``level``,
``logger``, ``msg``, ``stack``, and ``err`` when an exception is logged) is renamed ``field_<name>`` so
it cannot shadow it; without an exception, an ``err`` field is the error text, as in Prometheus' logs. The
text of a logged exception (``exc_info``) goes into ``err``, and ``stack_info`` into ``stack``.

Secrets: every value passed to ``register_secret`` (client secrets, passwords, tokens) is replaced
by ``<redacted>`` wherever it appears in a log line: message, logger name, field names and values,
exception text. ``redact`` applies the same replacement for other output, such as error pages and
reports. Redaction happens on each piece of text before it is quoted or JSON-escaped, because
escaping would change a secret containing quotes or backslashes and hide it from a search of the
finished line. Secrets shorter than 4 characters are ignored: they would mangle ordinary words.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

REDACTED = "<redacted>"
MIN_SECRET_LENGTH = 4

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
FORMATS = ("logfmt", "json")

_RESERVED_KEYS = frozenset({"ts", "level", "logger", "msg", "err", "stack"})

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
# Rebuilt under the lock on every change and swapped in whole, so readers need no lock.
_secrets_pattern: re.Pattern[str] | None = None


def register_secret(value: str) -> None:
    """Redact ``value`` from every log line from now on (ignored if shorter than 4 characters)."""
    global _secrets_pattern
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        _secrets.add(value)
        # Longest first, so a secret that contains another one is redacted as a whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_pattern = re.compile("|".join(map(re.escape, ordered)))


def clear_secrets() -> None:
    """Forget every registered secret (on a configuration reload, before registering the new ones)."""
    global _secrets_pattern
    with _secrets_lock:
        _secrets.clear()
        _secrets_pattern = None


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``<redacted>``."""
    pattern = _secrets_pattern
    return text if pattern is None else pattern.sub(REDACTED, text)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger: ``level`` debug|info|warn|error, ``fmt`` logfmt|json, to stderr.

    Calling it again (a reload, a test) replaces the handler installed by the previous call.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (expected one of: {', '.join(LEVELS)})")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
        handler.close()
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root.addHandler(handler)
    root.setLevel(LEVELS[level])


class _StderrHandler(logging.StreamHandler):
    """Marks the handler ``setup_logging`` owns, so a second call replaces only that one."""


class _StructuredFormatter(logging.Formatter):
    """Collects a record's keys and values, redacted, in output order; subclasses render them."""

    def format(self, record: logging.LogRecord) -> str:
        return self.render(self.pairs(record))

    def render(self, pairs: list[tuple[str, object]]) -> str:
        raise NotImplementedError

    def pairs(self, record: logging.LogRecord) -> list[tuple[str, object]]:
        pairs: list[tuple[str, object]] = [
            ("ts", _timestamp(record)),
            ("level", _level_name(record.levelno)),
            ("logger", redact(record.name)),
            ("msg", redact(record.getMessage())),
        ]
        fields = getattr(record, "fields", None)
        reserved = _RESERVED_KEYS if record.exc_info else _RESERVED_KEYS - {"err"}
        if isinstance(fields, Mapping):
            pairs.extend(_field_pairs(fields.items(), reserved))
        elif fields is not None:
            pairs.extend(_field_pairs([("fields", fields)], reserved))
        if record.exc_info:
            pairs.append(("err", redact(self.formatException(record.exc_info))))
        if record.stack_info:
            pairs.append(("stack", redact(self.formatStack(record.stack_info))))
        return pairs


class LogfmtFormatter(_StructuredFormatter):
    """``key=value`` pairs on one line; values quoted when they contain spaces, ``=`` or quotes."""

    def render(self, pairs: list[tuple[str, object]]) -> str:
        return " ".join(f"{_logfmt_key(key)}={_logfmt_value(value)}" for key, value in pairs)


class JSONFormatter(_StructuredFormatter):
    """One JSON object per line, with the same keys as the logfmt output."""

    def render(self, pairs: list[tuple[str, object]]) -> str:
        return json.dumps(dict(pairs), ensure_ascii=False, separators=(",", ":"))


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{int(record.msecs):03d}Z"


def _level_name(levelno: int) -> str:
    # go-kit knows only these four; CRITICAL is an error that happens to be worse.
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warn"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def _field_pairs(items: Iterable[tuple[object, object]], reserved: frozenset[str]) -> list[tuple[str, object]]:
    pairs: list[tuple[str, object]] = []
    for raw_key, value in items:
        key = redact(str(raw_key))
        if key in reserved:
            key = f"field_{key}"
        pairs.append((key, _redacted_value(value)))
    return pairs


def _redacted_value(value: object) -> object:
    """JSON scalars stay typed unless their text holds a secret; anything else becomes its str()."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value)
    redacted = redact(text)
    # NaN and infinities are not JSON numbers; as text they survive both output formats.
    if isinstance(value, int | float) and redacted == text and math.isfinite(value):
        return value
    return redacted


def _logfmt_key(key: str) -> str:
    # A key cannot be quoted in logfmt, so characters that would end it are replaced instead.
    return "".join("_" if char <= " " or char in '="' else char for char in key) or "_"


_LOGFMT_ESCAPES = {
    **{code: f"\\u{code:04x}" for code in [*range(0x20), 0x7F]},
    ord("\\"): "\\\\",
    ord('"'): '\\"',
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def _logfmt_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and not any(char <= " " or char in '="' or char == "\x7f" for char in text):
        return text
    return '"' + text.translate(_LOGFMT_ESCAPES) + '"'
