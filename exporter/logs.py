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

Secrets: every value passed to ``register_secret`` (client secrets, passwords, ``user:password`` pairs) is
replaced by ``<redacted>`` wherever it appears in a log line as a token of its own: message, logger name,
field names and values, exception text. Its derived forms are replaced too: Base64 (a Basic header carries
``base64(user:password)``) and URL-encoding (``quote`` and ``quote_plus``, as in a proxy URL's userinfo or
a form body). ``redact`` applies the same replacement for other output, such as error pages and reports.

The token rule: a secret is replaced only where it is not glued to a word character (letter, digit,
underscore) on a side where the secret itself begins or ends with one; a ``%XX`` escape before it counts as
a boundary. So a password ``Adm1`` goes from ``password Adm1``, ``user:Adm1@proxy`` or ``pw=Adm1&``, but
``CORP\\BEMSAdmin`` stays whole instead of becoming ``CORP\\BEMS<redacted>in``, a hint that gives the
password away. Secrets shorter than 4 characters are not registered at all (they would match ordinary
words, and the replacement would point at them); configuration loading warns about them.

Redaction happens on each piece of text before it is quoted or JSON-escaped, because escaping would change
a secret containing quotes or backslashes and hide it from a search of the finished line.

Protocol tokens are redacted whatever is registered, because they are derived from secrets the exporter
never sees whole (an NTLM AUTHENTICATE message is enough to crack NetNTLMv2 offline; a bearer token is a
credential until it expires): ``Authorization``, ``Proxy-Authorization``, ``WWW-Authenticate`` and
``Proxy-Authenticate`` values, ``Basic``/``Bearer``/``NTLM``/``Negotiate`` followed by a token, NTLMSSP
messages in Base64 (``TlRMTVNT...``), pyspnego's ``step input/output`` tokens and JWTs (``eyJ...``).

The libraries that speak those protocols (``PROTOCOL_LOGGERS``: pyspnego, requests-ntlm, urllib3, MSAL,
oauthlib) log at warning and above only, whatever ``--log.level`` says, unless ``protocol_debug`` (the
``--log.protocol-debug`` flag) lets them log at ``--log.level``; their lines are redacted as every other.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus

REDACTED = "<redacted>"
MIN_SECRET_LENGTH = 4

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
FORMATS = ("logfmt", "json")
# The loggers of the libraries that carry authentication on the wire. At debug they log NTLM and SPNEGO
# messages (pyspnego: "NTLM step output: TlRMTVNT..."), connection details (urllib3) and token-cache events
# (MSAL): quiet unless --log.protocol-debug asks for them.
PROTOCOL_LOGGERS = ("spnego", "requests_ntlm", "ntlm_auth", "urllib3", "msal", "requests_oauthlib", "oauthlib")

_RESERVED_KEYS = frozenset({"ts", "level", "logger", "msg", "err", "stack"})

# (pattern, replacement): each keeps what names the token and replaces the token itself.
_PROTOCOL_TOKENS = [
    # Header values, as "Name: value" or a dict's "'Name': 'value'" (every challenge and credential in it).
    (
        re.compile(
            r"(?i)(\b(?:proxy-)?authorization|\b(?:www|proxy)-authenticate)(\s*[\"']?\s*[:=]\s*[\"']?\s*)[^\"'\r\n]+"
        ),
        rf"\1\2{REDACTED}",
    ),
    # A scheme and its credentials (a token68, RFC 9110 section 11.2): "Basic dXNlcjpwYXNz", "NTLM TlRMTVNT...",
    # "Bearer eyJ..."; 16 characters at least, so that prose such as "NTLM authentication" stays.
    (re.compile(r"(?i)\b(basic|bearer|ntlm|negotiate)(\s+)[A-Za-z0-9._~+/-]{16,}=*(?![\w=])"), rf"\1\2{REDACTED}"),
    # NTLMSSP messages in Base64 ("NTLMSSP\0" is "TlRMTVNTUA..."), wherever they appear.
    (re.compile(r"TlRMTVNT[A-Za-z0-9+/]*=*"), REDACTED),
    # pyspnego's debug lines: "NTLM step input: ...", "SPNEGO step output: ...", "CredSSP TSRequest input: ...".
    (re.compile(r"(?i)(\b(?:step|tsrequest) (?:input|output): )\S+"), rf"\1{REDACTED}"),
    # JSON Web Tokens (Entra ID access tokens, client assertions): header.payload.signature.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), REDACTED),
]

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
# Rebuilt under the lock on every change and swapped in whole, so readers need no lock.
_secrets_pattern: re.Pattern[str] | None = None


def derived_forms(secret: str) -> set[str]:
    """The secret and the encodings it travels in: Base64 and URL-encoding."""
    return {
        secret,
        base64.b64encode(secret.encode()).decode(),
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
    }


def _token_pattern(form: str) -> str:
    """``form`` as a regex that matches only where it is a token of its own (see the module's docstring)."""
    before = r"(?:(?<!\w)|(?<=%[0-9A-Fa-f]{2}))" if re.match(r"\w", form) else ""
    after = r"(?!\w)" if re.search(r"\w$", form) else ""
    return f"{before}{re.escape(form)}{after}"


def register_secret(value: str) -> None:
    """Redact ``value`` and its derived forms from every log line from now on (ignored below 4 characters)."""
    if len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _swap_in(_secrets | derived_forms(value))


def replace_secrets(values: Iterable[str]) -> None:
    """Forget every registered secret and register ``values`` (a configuration load or reload): in one swap, so
    that no line logged meanwhile goes out unredacted, and with one regex compiled for all of them."""
    forms = {form for value in values if len(value) >= MIN_SECRET_LENGTH for form in derived_forms(value)}
    with _secrets_lock:
        _swap_in(forms)


def _swap_in(secrets: set[str]) -> None:
    """Make ``secrets`` the registered ones (the caller holds ``_secrets_lock``)."""
    global _secrets, _secrets_pattern
    _secrets = secrets
    # Longest first, so a secret that contains another one is redacted as a whole.
    ordered = sorted(secrets, key=len, reverse=True)
    _secrets_pattern = re.compile("|".join(map(_token_pattern, ordered))) if ordered else None


def redact(text: str) -> str:
    """``text`` with every registered secret and every protocol token replaced by ``<redacted>``."""
    pattern = _secrets_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    for token, replacement in _PROTOCOL_TOKENS:
        text = token.sub(replacement, text)
    return text


def setup_logging(level: str, fmt: str, protocol_debug: bool = False) -> None:
    """Configure the root logger: ``level`` debug|info|warn|error, ``fmt`` logfmt|json, to stderr.

    ``PROTOCOL_LOGGERS`` log warnings and errors only, unless ``protocol_debug`` lets them log at ``level``.
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
    for name in PROTOCOL_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if protocol_debug else logging.WARNING)


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
