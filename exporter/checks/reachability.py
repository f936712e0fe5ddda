"""``reachability``: the endpoint's name resolves and its port (443 by default) accepts TCP connections.

Through a proxy, reachability means the proxy's CONNECT to the endpoint succeeded. A direct connection
also says what the name resolved to: the addresses by family and scope (public, private ...), and,
with the target's own ``dns`` servers, the resolver's code when the lookup failed.
"""

from __future__ import annotations

from collections import Counter

from ..config import Target
from ..metrics import MetricSpec
from ..protocol import dns_lookup
from ..results import CheckResult
from .base import Check, ProbeContext, every_target

DNS_LOOKUP = MetricSpec("bems_dns_lookup_seconds", "Time the last reachability check took to resolve the host.")
TCP_CONNECT = MetricSpec(
    "bems_tcp_connect_seconds",
    "Time the last reachability check took to connect (to the proxy, when one is configured).",
)
DNS_ANSWER_ADDRESSES = MetricSpec(
    "bems_dns_answer_addresses",
    "Addresses the host name resolved to in the last reachability check, by address family and scope.",
    labels=("family", "scope"),
)
DNS_RESOLVER = MetricSpec(
    "bems_dns_resolver_info",
    "1, with who resolved the host name in the last reachability check: the target's dns servers (configured) "
    "or the exporter host's resolver (system), and the view the servers give (internet, internal; empty for system).",
    "info",
    ("resolver", "view"),
)
DNS_FAILURE = MetricSpec(
    "bems_dns_failure_reason",
    "1 for the resolver's code when the last reachability check's lookup at the target's dns servers failed.",
    labels=("rcode",),
)


def _measure_answer(target: Target, ctx: ProbeContext, addresses: list[str]) -> None:
    dns = ctx.config.dns_of(target)
    ctx.rec.measure(
        DNS_RESOLVER, 1, resolver="system" if dns is None else "configured", view="" if dns is None else dns.view.value
    )
    counts = Counter((dns_lookup.address_family(a), dns_lookup.address_scope(a).value) for a in addresses)
    for (family, scope), count in sorted(counts.items()):
        ctx.rec.measure(DNS_ANSWER_ADDRESSES, count, family=family, scope=scope)


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    lookup = ctx.lookup(target)
    answered: list[str] = []

    async def watched(host: str, port: int) -> tuple[list[str], float]:
        addresses, seconds = await lookup(host, port)
        answered.extend(addresses)
        return addresses, seconds

    # Through a proxy nothing is looked up here; an IP address in the URL is no answer of a resolver.
    resolves = ctx.proxy(target) is None and not dns_lookup.is_address(target.host)
    try:
        connection = await ctx.connect(target, ctx.rec, watched)
    except dns_lookup.DnsFailure as failure:
        ctx.rec.measure(DNS_FAILURE, 1, rcode=failure.rcode.value)
        raise
    finally:
        if resolves:  # also when the connection failed: a leaked private answer explains a timeout
            _measure_answer(target, ctx, answered)
    ctx.release(connection)  # nothing to say on it; in a round, tls handshakes over it
    ctx.rec.measure(DNS_LOOKUP, connection.dns_seconds)
    ctx.rec.measure(TCP_CONNECT, connection.connect_seconds)
    return ctx.rec.passed()


CHECK = Check(
    "reachability", probe, every_target, (DNS_LOOKUP, TCP_CONNECT, DNS_ANSWER_ADDRESSES, DNS_RESOLVER, DNS_FAILURE)
)
