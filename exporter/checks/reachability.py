"""``reachability``: the endpoint's name resolves and its port (443 by default) accepts TCP connections.

Through a proxy, reachability means the proxy's CONNECT to the endpoint succeeded.
"""

from __future__ import annotations

from ..config import Target
from ..metrics import MetricSpec
from ..protocol import tcp_tls
from ..results import CheckResult
from .base import Check, ProbeContext, every_target

DNS_LOOKUP = MetricSpec("bems_dns_lookup_seconds", "Time the last reachability check took to resolve the host.")
TCP_CONNECT = MetricSpec(
    "bems_tcp_connect_seconds",
    "Time the last reachability check took to connect (to the proxy, when one is configured).",
)


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    connection = await tcp_tls.connect(target.host, target.port, ctx.proxy(target), ctx.rec)
    connection.close()  # nothing to say
    ctx.rec.measure(DNS_LOOKUP, connection.dns_seconds)
    ctx.rec.measure(TCP_CONNECT, connection.connect_seconds)
    return ctx.rec.passed()


CHECK = Check("reachability", probe, every_target, (DNS_LOOKUP, TCP_CONNECT))
