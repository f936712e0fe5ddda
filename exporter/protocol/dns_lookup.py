"""Name lookups at given resolvers (a target's ``dns.servers``) with c-ares, through aiodns.

The exporter host's own resolver (``tcp_tls.resolve``) answers as the host's network sees it; a
target's ``dns`` asks the resolvers its clients use instead: the public ones cloud BEMS uses, or the
internal ones of an on-premises BEMS. A and AAAA are asked at once; a failure keeps the resolver's own
code (NXDOMAIN, SERVFAIL, REFUSED, no answer), which says who has to act. Each address answered is
classified by scope (``address_scope``), so a public name that answers a private address (split-brain
DNS leaking an internal record) is visible.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from enum import StrEnum

import aiodns
import pycares

from ..config import DnsConfig, DnsView
from ..results import ProbeFailure, Reason

# RFC 6598 shared address space (carrier-grade NAT): Python's ipaddress counts it as neither private nor global.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")  # RFC 4193
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


class Scope(StrEnum):
    """Where an address can be reached from (the ``scope`` label, a public contract)."""

    PUBLIC = "public"  # globally routable: what the Internet can reach
    PRIVATE = "private"  # RFC 1918
    UNIQUE_LOCAL = "unique_local"  # RFC 4193, IPv6's private addresses
    LOOPBACK = "loopback"  # 127/8, ::1
    LINK_LOCAL = "link_local"  # 169.254/16, fe80::/10
    CGNAT = "cgnat"  # 100.64/10, RFC 6598
    RESERVED = "reserved"  # documentation, benchmarking, multicast, unspecified and other special-purpose ranges


def address_scope(address: str) -> Scope:
    """The scope of an IPv4 or IPv6 address; an IPv4-mapped IPv6 address is judged as its IPv4 address."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return Scope.LOOPBACK
    if ip.is_link_local:
        return Scope.LINK_LOCAL
    if ip in _CGNAT:
        return Scope.CGNAT
    if any(ip in network for network in _RFC1918):
        return Scope.PRIVATE
    if ip in _UNIQUE_LOCAL:
        return Scope.UNIQUE_LOCAL
    if ip.is_global and not ip.is_multicast:
        return Scope.PUBLIC
    return Scope.RESERVED


def address_family(address: str) -> str:
    """``ipv4`` or ``ipv6`` (the ``family`` label)."""
    return "ipv6" if ipaddress.ip_address(address).version == 6 else "ipv4"


class Rcode(StrEnum):
    """How a lookup failed, in the resolver's terms (the ``rcode`` label, a public contract)."""

    NXDOMAIN = "nxdomain"  # the name does not exist (RCODE 3)
    NODATA = "nodata"  # the name exists, with neither an A nor an AAAA record (NOERROR, empty answer)
    SERVFAIL = "servfail"  # the resolver could not answer (RCODE 2): DNSSEC validation, a broken delegation
    REFUSED = "refused"  # the resolver will not answer this client or name (RCODE 5)
    TIMEOUT = "timeout"  # no server answered within dns.timeout, dns.tries times
    UNREACHABLE = "unreachable"  # no server could be contacted (ICMP port unreachable: nothing listens)
    BAD_RESPONSE = "bad_response"  # FORMERR, NOTIMP or an answer that does not parse


_RCODES = {
    pycares.errno.ARES_ENOTFOUND: Rcode.NXDOMAIN,
    pycares.errno.ARES_ENODATA: Rcode.NODATA,
    pycares.errno.ARES_ESERVFAIL: Rcode.SERVFAIL,
    pycares.errno.ARES_EREFUSED: Rcode.REFUSED,
    pycares.errno.ARES_ETIMEOUT: Rcode.TIMEOUT,
    pycares.errno.ARES_ECONNREFUSED: Rcode.UNREACHABLE,
}
# When A and AAAA fail differently, the code that says more about the name wins: NXDOMAIN is about the
# name whatever the type, an empty answer to one type says less than a failure of the other.
_PRECEDENCE = (Rcode.NXDOMAIN, Rcode.SERVFAIL, Rcode.REFUSED, Rcode.TIMEOUT, Rcode.UNREACHABLE, Rcode.BAD_RESPONSE)


def _hint(rcode: Rcode, host: str, dns: DnsConfig) -> str:
    servers = ", ".join(dns.servers)
    where = "the public DNS" if dns.view == DnsView.INTERNET else f"the zone {servers} serve"
    return {
        Rcode.NXDOMAIN: f"{host} does not exist in {where}: publish its A (or AAAA) record there",
        Rcode.NODATA: f"{host} exists in {where} but has no A or AAAA record: add one",
        Rcode.SERVFAIL: f"{servers} could not resolve {host}: a DNSSEC validation failure or an unreachable "
        "authoritative server (check the delegation and signatures, e.g. with dig +dnssec)",
        Rcode.REFUSED: f"{servers} refuse to resolve {host} for this host: check dns.servers, and the resolvers' "
        "recursion and access lists",
        Rcode.TIMEOUT: f"no answer from {servers}: are they up, and do firewalls pass UDP and TCP to their port?",
        Rcode.UNREACHABLE: f"nothing listens at {servers}: check dns.servers (address and port)",
        Rcode.BAD_RESPONSE: f"{servers} answered with a malformed or unsupported response",
    }[rcode]


class DnsFailure(ProbeFailure):
    """A lookup at configured resolvers that found no address: reason ``dns``, with the resolver's code."""

    def __init__(self, rcode: Rcode, host: str, dns: DnsConfig, text: str) -> None:
        message = f"{host} does not resolve at {', '.join(dns.servers)}: {rcode.value} ({text})"
        super().__init__(Reason.DNS, message, _hint(rcode, host, dns))
        self.rcode = rcode


@dataclass(frozen=True, slots=True)
class _Failed:
    rcode: Rcode
    text: str


def _rcode_of(err: BaseException) -> _Failed:
    if isinstance(err, aiodns.error.DNSError) and err.args:
        code = err.args[0]
        text = str(err.args[1]) if len(err.args) > 1 else pycares.errno.strerror(code)
        return _Failed(_RCODES.get(code, Rcode.BAD_RESPONSE), text)
    return _Failed(Rcode.BAD_RESPONSE, str(err) or type(err).__name__)


def is_address(host: str) -> bool:
    """Whether ``host`` is an IP address rather than a name to look up."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DnsResolvers:
    """One c-ares channel per ``dns`` setting, made on the event loop that first uses it, closed with it."""

    def __init__(self) -> None:
        self._resolvers: dict[DnsConfig, aiodns.DNSResolver] = {}

    def _resolver(self, dns: DnsConfig) -> aiodns.DNSResolver:
        resolver = self._resolvers.get(dns)
        if resolver is None:
            resolver = aiodns.DNSResolver(
                nameservers=list(dns.servers), timeout=dns.timeout.total_seconds(), tries=dns.tries
            )
            self._resolvers[dns] = resolver
        return resolver

    async def lookup(self, dns: DnsConfig, host: str) -> tuple[list[str], float]:
        """``host``'s IPv4 then IPv6 addresses at ``dns.servers``, and how long asking took; a DnsFailure if none."""
        if is_address(host):
            return [host], 0.0
        t0 = time.perf_counter()
        resolver = self._resolver(dns)
        answers = await asyncio.gather(
            resolver.query_dns(host, "A"), resolver.query_dns(host, "AAAA"), return_exceptions=True
        )
        addresses: list[str] = []
        failures: list[_Failed] = []
        for answer in answers:
            if isinstance(answer, asyncio.CancelledError):
                raise answer
            if isinstance(answer, BaseException):
                failures.append(_rcode_of(answer))
                continue
            # The answer section also holds the CNAME chain that led to the addresses.
            addresses += [
                str(record.data.addr)
                for record in answer.answer
                if record.type in (pycares.QUERY_TYPE_A, pycares.QUERY_TYPE_AAAA)
            ]
        seconds = time.perf_counter() - t0
        if addresses:
            return list(dict.fromkeys(addresses)), seconds
        if not failures:  # both answered NOERROR without an address record
            failures.append(_Failed(Rcode.NODATA, "no A or AAAA record"))
        failed = min(failures, key=lambda f: _PRECEDENCE.index(f.rcode) if f.rcode in _PRECEDENCE else len(_PRECEDENCE))
        raise DnsFailure(failed.rcode, host, dns, failed.text)

    async def close(self) -> None:
        for resolver in self._resolvers.values():
            await resolver.close()
        self._resolvers.clear()
