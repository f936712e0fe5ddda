"""Populations from a real OpenLDAP server (tests/ldap_server.py): paging past the size limit, nested groups
walked client-side, LDAPS and StartTLS with the configured CA, and every reason a read can fail."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ldap_server import (
    SERVICE_DN,
    SERVICE_PASSWORD,
    SOFT_SIZE_LIMIT,
    SUFFIX,
    Slapd,
    group_dn,
    group_ldif,
    people_ldif,
    person_dn,
    start_slapd,
)

from bems_simulator.pki import CertificateAuthority
from exporter.config import LdapSource
from exporter.protocol import ldap_directory
from exporter.protocol.population_sources import SourceError, SourceReason

PEOPLE = 3000
# bems holds sales and eng (groups) and p0; sales holds emea, which holds bems again (a cycle AD allows too).
SALES = range(1, 1000)
EMEA = range(1000, 1100)
ENG = range(2000, 2500)
NESTED_MEMBERS = {f"p{n}@corp.test" for n in (0, *SALES, *EMEA, *ENG)}
LDAP_SOCKET_WARNINGS = ("unclosed <socket.socket", "unclosed <ssl.SSLSocket")  # what a socket ldap3 left open says


def _ldif() -> str:
    people = people_ldif(f"p{n}" for n in range(PEOPLE))
    groups = (
        group_ldif("bems", [group_dn("sales"), group_dn("eng"), person_dn("p0")])
        + group_ldif("sales", [*(person_dn(f"p{n}") for n in SALES), group_dn("emea")])
        + group_ldif("emea", [*(person_dn(f"p{n}") for n in EMEA), group_dn("bems")])
        + group_ldif("eng", [person_dn(f"p{n}") for n in ENG])
    )
    return people + groups


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = start_slapd(tmp_path_factory.mktemp("slapd"), _ldif(), CertificateAuthority.create("BEMS test CA"))
    yield server
    server.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    path = tmp_path / "bind-password"
    path.write_text(SERVICE_PASSWORD + "\n")
    return str(path)


def source(slapd: Slapd, password_file: str, **overrides: Any) -> LdapSource:
    settings = {
        "url": slapd.ldaps_url, "bind_dn": SERVICE_DN, "password_file": password_file, "base": SUFFIX,
        "filter": "(objectClass=inetOrgPerson)", "ca_file": slapd.ca_file, "page_size": 200, "timeout": "5s",
    } | overrides  # fmt: skip
    return LdapSource.model_validate({key: value for key, value in settings.items() if value is not None})


def test_a_filter_reads_every_entry_in_pages_past_the_servers_size_limit(slapd: Slapd, password_file: str) -> None:
    found = ldap_directory.search(source(slapd, password_file))
    assert PEOPLE > SOFT_SIZE_LIMIT
    assert len(found) == PEOPLE
    assert found[0] == "p0@corp.test"  # sorted, case-insensitively


def test_a_group_is_its_members_at_any_depth_walked_client_side(slapd: Slapd, password_file: str) -> None:
    found = ldap_directory.search(
        source(slapd, password_file, filter=None, group=group_dn("bems"), directory="generic")
    )
    assert set(found) == NESTED_MEMBERS


def test_starttls_on_ldap_reads_the_same(slapd: Slapd, password_file: str) -> None:
    settings = source(slapd, password_file, url=slapd.ldap_url, start_tls=True, filter="(uid=p1*)")
    assert len(ldap_directory.search(settings)) == 1111  # p1, p10-p19, p100-p199, p1000-p1999


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"bind_dn": f"cn=nobody,{SUFFIX}"}, SourceReason.BIND_FAILED, id="wrong-bind-dn"),
        pytest.param({"base": f"ou=nowhere,{SUFFIX}"}, SourceReason.NO_SUCH_OBJECT, id="no-such-base"),
        pytest.param(
            {"filter": None, "group": group_dn("nobody"), "directory": "generic"},
            SourceReason.NO_SUCH_OBJECT,
            id="no-such-group",
        ),
        pytest.param({"filter": "(uid=nobody-at-all)"}, SourceReason.EMPTY, id="nobody-matches"),
        pytest.param({"filter": "(uid=p1"}, SourceReason.SEARCH_FAILED, id="malformed-filter"),
        pytest.param({"ca_file": None}, SourceReason.TLS, id="untrusted-certificate"),
        pytest.param({"url": "ldaps://127.0.0.1:1"}, SourceReason.UNREACHABLE, id="nothing-listens"),
    ],
)
def test_each_failure_has_its_reason(
    slapd: Slapd, password_file: str, tmp_path: Path, overrides: dict[str, Any], reason: SourceReason
) -> None:
    settings = source(slapd, password_file, **overrides)
    gc.collect()  # earlier tests' garbage (an asyncio transport of this worker's last loop) is not this search's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(SourceError) as failure:
            ldap_directory.search(settings)
        error = failure.value
        # The traceback's frames hold the connection, and with it any socket left open: let them go, so that
        # such a socket is garbage and warns.
        error.__traceback__ = error.__context__ = error.__cause__ = None
        del failure
        gc.collect()
    assert error.reason == reason, error.message
    assert SERVICE_PASSWORD not in error.message
    # The socket is closed whatever failed (ldap3 leaves it open after a refused connect or a failed search).
    # ldap3 is synchronous: its sockets are socket.socket or ssl.SSLSocket, never an event loop's transport.
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not [message for message in unclosed if message.startswith(LDAP_SOCKET_WARNINGS)]


def test_a_wrong_password_is_bind_failed(slapd: Slapd, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    with pytest.raises(SourceError) as failure:
        ldap_directory.search(source(slapd, str(wrong)))
    assert failure.value.reason == SourceReason.BIND_FAILED
    assert failure.value.hint == ldap_directory.BIND_HINT


def test_a_server_stopped_is_unreachable_and_serves_again_once_restarted(slapd: Slapd, password_file: str) -> None:
    settings = source(slapd, password_file, filter="(uid=p2999)")
    slapd.stop()
    try:
        with pytest.raises(SourceError) as failure:
            ldap_directory.search(settings)
        assert failure.value.reason == SourceReason.UNREACHABLE
    finally:
        slapd.start()
    assert ldap_directory.search(settings) == ("p2999@corp.test",)


@pytest.mark.parametrize(
    ("group", "attribute", "expected"),
    [
        ("CN=BEMS Users,OU=Groups,DC=corp,DC=test", "mail",
         "(&(memberOf:1.2.840.113556.1.4.1941:=CN=BEMS Users,OU=Groups,DC=corp,DC=test)(mail=*))"),
        # RFC 4515: a DN's parentheses, asterisks and backslashes are escaped in a filter value.
        ("CN=Sales (EMEA)*,DC=corp", "proxyAddresses",
         "(&(memberOf:1.2.840.113556.1.4.1941:=CN=Sales \\28EMEA\\29\\2a,DC=corp)(proxyAddresses=*))"),
    ],
)  # fmt: skip
def test_active_directory_gets_the_in_chain_filter(group: str, attribute: str, expected: str) -> None:
    assert ldap_directory.in_chain_filter(group, attribute) == expected
