"""Reading a population's members: why a source failed, and the address file (one a line, or CSV).

A source that fails raises :class:`SourceError` with one of :class:`SourceReason` (a public contract, in
docs/metrics.md): the population keeps its last good list, and ``bems_population_source_up`` says so. A
source never answers "nobody": an empty list is a failure too (``empty``), since a silently empty
population would look like a population where nothing fails.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from enum import StrEnum

# At most this many bad lines are named in the message: the file may be a whole export gone wrong.
MAX_NAMED_LINES = 5


class SourceReason(StrEnum):
    UNREADABLE = "unreadable"  # the file is missing or not readable (permissions, not UTF-8)
    MALFORMED_LINE = "malformed_line"  # a line (or CSV cell) that is not an SMTP address
    MISSING_COLUMN = "missing_column"  # the CSV header has no column of that name
    EMPTY = "empty"  # the source answered, with nobody in it
    UNREACHABLE = "unreachable"  # the LDAP server or Graph could not be reached, or dropped the connection
    TIMEOUT = "timeout"  # no answer in time
    TLS = "tls"  # the TLS handshake or StartTLS failed, or the certificate is not trusted
    BIND_FAILED = "bind_failed"  # the LDAP server rejected the bind DN and password
    NO_SUCH_OBJECT = "no_such_object"  # the search base or group is not in the directory
    SEARCH_FAILED = "search_failed"  # another LDAP error (insufficient access, bad filter, size limit)
    TOKEN = "token"  # Entra ID issued no token for Graph
    FORBIDDEN = "forbidden"  # Graph refused (the app lacks GroupMember.Read.All)
    NOT_FOUND = "not_found"  # Graph has no group with that id
    THROTTLED = "throttled"  # Graph asked to back off (HTTP 429)
    BAD_RESPONSE = "bad_response"  # not the answer the protocol calls for


class SourceError(Exception):
    def __init__(self, reason: SourceReason, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.hint = hint


def is_address(value: str) -> bool:
    """An SMTP address as the configuration's ``mailboxes`` take it: ``local@domain``, no spaces."""
    local, at, domain = value.rpartition("@")
    return bool(local and at and domain) and not any(character.isspace() for character in value)


def unique_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """Each address once, compared case-insensitively (SMTP domains are; Exchange matches local parts so too),
    in first-seen spelling, sorted so that a sweep's order does not depend on the source's."""
    seen: dict[str, str] = {}
    for address in addresses:
        seen.setdefault(address.casefold(), address)
    return tuple(sorted(seen.values(), key=str.casefold))


def _malformed(bad: list[tuple[int, str]], path: str) -> SourceError:
    named = ", ".join(f"line {number}: {text[:60]!r}" for number, text in bad[:MAX_NAMED_LINES])
    more = f" and {len(bad) - MAX_NAMED_LINES} more" if len(bad) > MAX_NAMED_LINES else ""
    return SourceError(
        SourceReason.MALFORMED_LINE,
        f"{path}: {len(bad)} line(s) are not SMTP addresses ({named}{more})",
        "fix the export that writes the file: the last good list is checked meanwhile",
    )


def _values(text: str, path: str, column: str | None) -> Iterator[tuple[int, str]]:
    """(line number, value) of every non-blank entry: a line, or the column's cell of a CSV row."""
    if column is None:
        for number, line in enumerate(text.splitlines(), start=1):
            value = line.strip()
            if value and not value.startswith("#"):
                yield number, value
        return
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")))  # Export-Csv writes a byte order mark
    if column not in (reader.fieldnames or ()):
        known = ", ".join(reader.fieldnames or ()) or "no header row"
        raise SourceError(SourceReason.MISSING_COLUMN, f"{path}: no column {column!r} (the header has {known})")
    for row in reader:
        # A row without an address (a contact or a disabled user in the export) is skipped, not malformed.
        if value := (row.get(column) or "").strip():
            yield reader.line_num, value


def read_address_file(text: str, path: str, column: str | None) -> tuple[str, ...]:
    """The addresses of a file's text: one a line (blank lines and ``#`` comments skipped), or with ``column``
    the named column of a CSV file with a header row (RFC 4180, as Excel and Export-Csv write it)."""
    found: list[str] = []
    bad: list[tuple[int, str]] = []
    for number, value in _values(text, path, column):
        if is_address(value):
            found.append(value)
        else:
            bad.append((number, value))
    if bad:
        raise _malformed(bad, path)
    if not found:
        raise SourceError(SourceReason.EMPTY, f"{path} holds no address", "a population is never empty: check the file")
    return unique_addresses(found)
