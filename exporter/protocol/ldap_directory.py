"""A population from LDAP: the SMTP addresses of the entries a filter matches, or of a group's nested members.

ldap3 (pure Python, so no libldap to build against; RFC 2696 paged results; StartTLS) is blocking: callers run
:func:`search` in a worker thread, as NTLM's requests are. bonsai would be asyncio-native but builds against
libldap and its SASL stack; a population is read once an hour, which a thread serves as well.

Nested groups:
- Active Directory resolves them itself with the ``LDAP_MATCHING_RULE_IN_CHAIN`` matching rule
  (1.2.840.113556.1.4.1941; learn.microsoft.com/windows/win32/adsi/search-filter-syntax, "Operators"):
  ``(memberOf:1.2.840.113556.1.4.1941:=<group DN>)`` matches every entry in the group's chain, in one
  paged search.
- Other servers (OpenLDAP, 389 Directory Server) do not implement that rule: the group graph is read with one
  paged search for groups (``member``/``uniqueMember``) and one for entries with an address, and walked here,
  cycles included.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections import deque
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars

from ..config import Directory, LdapSource
from .population_sources import SourceError, SourceReason, is_address, unique_addresses

IN_CHAIN_RULE = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN
MEMBER_ATTRIBUTES = ("member", "uniqueMember")  # groupOfNames, groupOfUniqueNames (RFC 4519); AD's group: member
GROUPS_FILTER = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group))"
BIND_HINT = "check bind_dn and the password file, and that the account is not locked or expired"


def in_chain_filter(group_dn: str, attribute: str) -> str:
    """AD's filter for a group's members at any depth that have an address."""
    return f"(&(memberOf:{IN_CHAIN_RULE}:={escape_filter_chars(group_dn)})({escape_filter_chars(attribute)}=*))"


def address_filter(source: LdapSource) -> str:
    """The filter of a ``filter`` source, narrowed to entries with an address."""
    assert source.filter is not None
    inner = source.filter if source.filter.startswith("(") else f"({source.filter})"
    return f"(&{inner}({escape_filter_chars(source.attribute)}=*))"


def _server(source: LdapSource) -> ldap3.Server:
    parts = urlsplit(source.url)
    tls = ldap3.Tls(
        validate=ssl.CERT_REQUIRED,
        ca_certs_file=source.ca_file,  # None: the system's roots
        version=ssl.PROTOCOL_TLS_CLIENT,  # checks the host name against the certificate
    )
    return ldap3.Server(
        parts.hostname,
        port=source.secure_port,
        use_ssl=parts.scheme == "ldaps",
        tls=tls,
        get_info=ldap3.NONE,  # no root DSE read: one request less, and nothing the search needs
        connect_timeout=source.timeout.total_seconds(),
    )


def _connect(source: LdapSource) -> ldap3.Connection:
    connection = ldap3.Connection(
        _server(source),
        user=source.bind_dn,
        password=source.password.get_secret_value(),
        auto_bind=ldap3.AUTO_BIND_NONE,
        read_only=True,
        raise_exceptions=True,
        receive_timeout=math.ceil(source.timeout.total_seconds()),  # ldap3 packs it as whole seconds
    )
    try:
        connection.open()
        if source.start_tls:
            connection.start_tls()
        connection.bind()
    except BaseException:
        _close(connection)  # a refused bind or a failed StartTLS leaves the socket open otherwise
        raise
    return connection


def _close(connection: ldap3.Connection) -> None:
    """Unbind if bound, and close the socket whatever state ldap3 left it in (a refused connect leaves one)."""
    with contextlib.suppress(ldap_errors.LDAPException):  # nothing to unbind from: the socket is closed below
        connection.unbind()
    if connection.socket is not None:
        connection.socket.close()


def _paged(connection: ldap3.Connection, source: LdapSource, base: str, search_filter: str,
           attributes: list[str], scope: str = ldap3.SUBTREE) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Every entry of a paged search (RFC 2696) as ``{"dn": ..., "attributes": {...}}``."""
    for entry in connection.extend.standard.paged_search(
        base, search_filter, search_scope=scope, attributes=attributes, paged_size=source.page_size, generator=True
    ):
        if entry.get("type") == "searchResEntry":  # not the referrals AD returns beside a domain's entries
            yield entry


def _values(entry: dict[str, Any], attribute: str) -> list[str]:
    value = entry["attributes"].get(attribute) or []
    return [str(item) for item in (value if isinstance(value, list) else [value])]


def _addresses_of(entries: Iterator[dict[str, Any]], attribute: str) -> Iterator[str]:
    for entry in entries:
        yield from (value for value in _values(entry, attribute) if is_address(value))


def _nested_members(connection: ldap3.Connection, source: LdapSource) -> list[str]:
    """A group's addresses at any depth, walked here (servers without the in-chain rule)."""
    assert source.group is not None
    members: dict[str, list[str]] = {}
    for entry in _paged(connection, source, source.base, GROUPS_FILTER, list(MEMBER_ATTRIBUTES)):
        members[entry["dn"].casefold()] = [dn for name in MEMBER_ATTRIBUTES for dn in _values(entry, name)]
    root = source.group.casefold()
    if root not in members:
        raise SourceError(SourceReason.NO_SUCH_OBJECT, f"no group {source.group!r} under {source.base!r}")
    reached, queue = {root}, deque([root])
    while queue:
        for member in members.get(queue.popleft(), ()):
            if (key := member.casefold()) not in reached:
                reached.add(key)
                queue.append(key)
    with_address = f"({escape_filter_chars(source.attribute)}=*)"
    entries = _paged(connection, source, source.base, with_address, [source.attribute])
    return list(_addresses_of((entry for entry in entries if entry["dn"].casefold() in reached), source.attribute))


def _members(connection: ldap3.Connection, source: LdapSource) -> list[str]:
    if source.group is None:
        entries = _paged(connection, source, source.base, address_filter(source), [source.attribute])
    elif source.directory == Directory.ACTIVE_DIRECTORY:
        entries = _paged(connection, source, source.base, in_chain_filter(source.group, source.attribute),
                         [source.attribute])  # fmt: skip
    else:
        return _nested_members(connection, source)
    return list(_addresses_of(entries, source.attribute))


def search(source: LdapSource) -> tuple[str, ...]:
    """The population's addresses (blocking: run it in a worker thread); SourceError says why not."""
    where = urlsplit(source.url).netloc
    try:
        connection = _connect(source)
    except ldap_errors.LDAPInvalidCredentialsResult:
        message = f"{where} rejected the bind as {source.bind_dn}"
        raise SourceError(SourceReason.BIND_FAILED, message, BIND_HINT) from None
    except ldap_errors.LDAPStartTLSError as err:
        raise SourceError(SourceReason.TLS, f"StartTLS with {where} failed: {err}", _TLS_HINT) from None
    except ldap_errors.LDAPBindError as err:  # an anonymous or unwilling bind (no password: refused before it)
        raise SourceError(SourceReason.BIND_FAILED, f"{where} refused the bind: {err}", BIND_HINT) from None
    except ldap_errors.LDAPException as err:
        raise _connection_failure(err, where) from None
    try:
        found = _members(connection, source)
    except ldap_errors.LDAPNoSuchObjectResult:
        raise SourceError(SourceReason.NO_SUCH_OBJECT, f"{where} has no entry {source.base!r}") from None
    except (ldap_errors.LDAPOperationResult, ldap_errors.LDAPInvalidFilterError) as err:
        detail = f"{err.description}: {err.message}" if isinstance(err, ldap_errors.LDAPOperationResult) else str(err)
        raise SourceError(
            SourceReason.SEARCH_FAILED, f"{where}: {detail}"[:300],
            "check the filter, and that the bind account may read the entries and their address attribute",
        ) from None  # fmt: skip
    except ldap_errors.LDAPException as err:
        raise _connection_failure(err, where) from None
    finally:
        _close(connection)  # ldap3's own context manager leaves the socket open when the search raised
    if not found:
        raise SourceError(SourceReason.EMPTY, f"{where}: the search found no entry with {source.attribute}")
    return unique_addresses(found)


_TLS_HINT = "give the directory's CA in ca_file, and use the server's name as its certificate has it"


def _connection_failure(err: Exception, where: str) -> SourceError:
    text = str(err)
    if isinstance(err, ldap_errors.LDAPResponseTimeoutError) or "timed out" in text:
        return SourceError(SourceReason.TIMEOUT, f"{where} did not answer in time")
    if "ssl" in text.lower() or "certificate" in text.lower():
        return SourceError(SourceReason.TLS, f"TLS with {where} failed: {text[:200]}", _TLS_HINT)
    return SourceError(SourceReason.UNREACHABLE, f"cannot read {where}: {text[:200]}")
