"""What every check gets: the target, its effective settings, and a recorder for steps and samples."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..config import Config, Target
from ..metrics import MetricSpec
from ..protocol import tcp_tls
from ..protocol.tcp_tls import Proxy, client_ssl_context
from ..results import CheckResult, Recorder
from .resources import Resources


@dataclass(slots=True)
class ProbeContext:
    config: Config
    rec: Recorder
    timeout: float
    resources: Resources
    # Awaited before each request a check sends (signin): a population sweep's per-credential request budget.
    pace: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def for_target(cls, config: Config, target: Target, check: str, resources: Resources) -> ProbeContext:
        return cls(config, Recorder(target.name, check), config.timeout_of(target).total_seconds(), resources)

    @property
    def ca_file(self) -> str | None:
        return self.config.defaults.tls.ca_file

    def ssl_context(self, verify: bool = True) -> ssl.SSLContext:
        return client_ssl_context(self.ca_file, verify)

    def proxy(self, target: Target) -> Proxy | None:
        return Proxy.from_url(*self.config.proxy_of(target))

    async def connect(self, target: Target, rec: Recorder, lookup: tcp_tls.Lookup | None = None) -> tcp_tls.Connection:
        """A TCP connection to the target, its name looked up at the target's ``dns`` servers when it has some
        (else the host's resolver), or through its proxy; ``lookup`` replaces that lookup (to watch it)."""
        return await tcp_tls.connect(
            target.host, target.port, self.proxy(target), rec, lookup or self.lookup(target), self.lookup_hint(target)
        )

    def lookup(self, target: Target) -> tcp_tls.Lookup:
        dns = self.config.dns_of(target)
        if dns is None:
            return tcp_tls.resolve
        return lambda host, _port: self.resources.dns.lookup(dns, host)

    def lookup_hint(self, target: Target) -> str:
        dns = self.config.dns_of(target)
        if dns is None:
            return tcp_tls.SYSTEM_RESOLVER_HINT
        return f"the DNS servers {', '.join(dns.servers)} do not answer in time: check dns.servers and dns.timeout"


ProbeFn = Callable[[Target, ProbeContext], Awaitable[CheckResult]]


@dataclass(frozen=True, slots=True)
class Check:
    """A named check: its probe, which targets it applies to, and the metric families it owns."""

    name: str
    probe: ProbeFn
    applies: Callable[[Config, Target], bool]
    metrics: tuple[MetricSpec, ...] = ()
    uses_credential: bool = False  # bound by the per-credential concurrency limit
    # How many requests one run makes that each get the target's timeout (per-mailbox checks make one
    # per mailbox); the run as a whole gets that many timeouts, but never more than the interval.
    requests: Callable[[Config, Target], int] = lambda _config, _target: 1
    # Sharded by (target, mailbox) rather than by target: the sharded config keeps a target's owned mailboxes.
    per_mailbox: bool = False
    # What a population sweep asks of one mailbox (the detail line, or ProbeFailure); None: not swept.
    sweep: Callable[[ProbeContext, Target, str], Awaitable[str]] | None = None


def every_target(_config: Config, _target: Target) -> bool:
    return True
