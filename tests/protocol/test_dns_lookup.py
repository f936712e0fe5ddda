"""Lookups at given resolvers: real dnsmasq servers on loopback as a split-horizon pair, each resolver code
from a server that really answers it, and the scope of every kind of address."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from dns_servers import ROOT_TRUST_ANCHOR, closed_server, running_dnsmasq, silent_server

from exporter.config import DnsConfig, DnsView
from exporter.protocol.dns_lookup import DnsFailure, DnsResolvers, Rcode, Scope, address_family, address_scope
from exporter.results import Reason

NAME = "mail.contoso.test"
PUBLIC_V4, PUBLIC_V6 = "52.97.10.20", "2603:1026::20"  # globally routable; never connected to
INTERNAL_V4, INTERNAL_V6 = "10.20.30.40", "fd12:3456::40"


@dataclass
class Servers:
    internal: str
    internet: str
    validating: str  # DNSSEC-validating forwarder to the internal view: answers SERVFAIL for its bogus zone


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with (
        running_dnsmasq(f"--address=/{NAME}/{INTERNAL_V4}", f"--address=/{NAME}/{INTERNAL_V6}") as internal,
        running_dnsmasq(
            f"--address=/{NAME}/{PUBLIC_V4}",
            f"--address=/{NAME}/{PUBLIC_V6}",
            "--address=/missing.contoso.test/",  # NXDOMAIN for the name and below it
            "--local=/contoso.test/",  # answered here, not forwarded: a name without A or AAAA is NODATA
            "--txt-record=txt-only.contoso.test,v=spf1",  # exists, without A or AAAA
        ) as internet,  # fmt: skip
        # A trust anchor for contoso.test, whose zone is unsigned: validation fails, the answer is SERVFAIL.
        running_dnsmasq(
            "--dnssec",
            f"--trust-anchor={ROOT_TRUST_ANCHOR}",
            f"--trust-anchor=contoso.test,12345,8,2,{'0' * 64}",
            f"--server=/contoso.test/{internal.server.replace(':', '#')}",
        ) as validating,  # fmt: skip
    ):
        yield Servers(internal.server, internet.server, validating.server)


def dns(*servers: str, view: DnsView = DnsView.INTERNAL, timeout: float = 2.0) -> DnsConfig:
    return DnsConfig(servers=servers, view=view, timeout=timedelta(seconds=timeout), tries=1)


@pytest.fixture
async def resolvers() -> object:
    resolvers = DnsResolvers()
    yield resolvers
    await resolvers.close()


async def test_a_split_horizon_pair_answers_each_its_view(servers: Servers, resolvers: DnsResolvers) -> None:
    internal, _ = await resolvers.lookup(dns(servers.internal), NAME)
    internet, _ = await resolvers.lookup(dns(servers.internet, view=DnsView.INTERNET), NAME)
    assert internal == [INTERNAL_V4, INTERNAL_V6]
    assert internet == [PUBLIC_V4, PUBLIC_V6]
    assert [address_scope(a) for a in internal] == [Scope.PRIVATE, Scope.UNIQUE_LOCAL]
    assert [address_scope(a) for a in internet] == [Scope.PUBLIC, Scope.PUBLIC]


async def test_an_ip_address_is_not_looked_up(resolvers: DnsResolvers) -> None:
    assert await resolvers.lookup(dns(closed_server()), "192.0.2.7") == (["192.0.2.7"], 0.0)


def _lookup_of(servers: Servers, case: str) -> tuple[DnsConfig, str]:
    if case == "silent":
        raise AssertionError("given by its own context")
    return {
        "nxdomain": (dns(servers.internet, view=DnsView.INTERNET), "ews.missing.contoso.test"),
        "nodata": (dns(servers.internet), "txt-only.contoso.test"),
        "refused": (dns(servers.internet), "mail.fabrikam.test"),  # no upstream for it: dnsmasq refuses
        "servfail": (dns(servers.validating), NAME),
        "unreachable": (dns(closed_server()), NAME),
    }[case]


@pytest.mark.parametrize(
    ("case", "rcode", "hint"),
    [
        ("nxdomain", Rcode.NXDOMAIN, "does not exist in the public DNS"),
        ("nodata", Rcode.NODATA, "has no A or AAAA record"),
        ("refused", Rcode.REFUSED, "refuse to resolve"),
        ("servfail", Rcode.SERVFAIL, "DNSSEC validation failure"),
        ("unreachable", Rcode.UNREACHABLE, "nothing listens at"),
    ],
)
async def test_each_resolver_code_is_kept(
    servers: Servers, resolvers: DnsResolvers, case: str, rcode: Rcode, hint: str
) -> None:
    config, host = _lookup_of(servers, case)
    with pytest.raises(DnsFailure) as failed:
        await resolvers.lookup(config, host)
    assert (failed.value.reason, failed.value.rcode) == (Reason.DNS, rcode)
    assert failed.value.message.startswith(f"{host} does not resolve at {config.servers[0]}: {rcode.value} (")
    assert hint in failed.value.hint


async def test_a_server_that_never_answers_is_a_timeout(resolvers: DnsResolvers) -> None:
    with silent_server() as server, pytest.raises(DnsFailure) as failed:
        await resolvers.lookup(dns(server, timeout=0.2), NAME)
    assert failed.value.rcode == Rcode.TIMEOUT
    assert "no answer from" in failed.value.hint


async def test_the_next_server_answers_when_the_first_is_down(servers: Servers, resolvers: DnsResolvers) -> None:
    addresses, _ = await resolvers.lookup(dns(closed_server(), servers.internal), NAME)
    assert addresses == [INTERNAL_V4, INTERNAL_V6]


@pytest.mark.parametrize(
    ("address", "scope", "family"),
    [
        ("52.97.10.20", Scope.PUBLIC, "ipv4"),
        ("2603:1026::20", Scope.PUBLIC, "ipv6"),
        ("10.1.2.3", Scope.PRIVATE, "ipv4"),
        ("172.16.0.1", Scope.PRIVATE, "ipv4"),
        ("172.31.255.254", Scope.PRIVATE, "ipv4"),
        ("172.32.0.1", Scope.PUBLIC, "ipv4"),  # just outside 172.16/12
        ("192.168.1.1", Scope.PRIVATE, "ipv4"),
        ("::ffff:192.168.1.1", Scope.PRIVATE, "ipv6"),  # IPv4-mapped: judged as its IPv4 address
        ("fd00::1", Scope.UNIQUE_LOCAL, "ipv6"),
        ("fc00::1", Scope.UNIQUE_LOCAL, "ipv6"),
        ("127.0.0.1", Scope.LOOPBACK, "ipv4"),
        ("127.8.9.10", Scope.LOOPBACK, "ipv4"),
        ("::1", Scope.LOOPBACK, "ipv6"),
        ("169.254.10.1", Scope.LINK_LOCAL, "ipv4"),
        ("fe80::1", Scope.LINK_LOCAL, "ipv6"),
        ("100.64.0.1", Scope.CGNAT, "ipv4"),
        ("100.127.255.254", Scope.CGNAT, "ipv4"),
        ("100.128.0.1", Scope.PUBLIC, "ipv4"),  # just outside 100.64/10
        ("192.0.2.53", Scope.RESERVED, "ipv4"),  # documentation (RFC 5737)
        ("2001:db8::53", Scope.RESERVED, "ipv6"),  # documentation (RFC 3849)
        ("198.18.0.1", Scope.RESERVED, "ipv4"),  # benchmarking
        ("224.0.0.251", Scope.RESERVED, "ipv4"),  # multicast
        ("0.0.0.0", Scope.RESERVED, "ipv4"),
    ],
)
def test_address_scope(address: str, scope: Scope, family: str) -> None:
    assert (address_scope(address), address_family(address)) == (scope, family)
