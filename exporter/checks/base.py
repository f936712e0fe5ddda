"""What every check gets: the target, its effective settings, and a recorder for steps and samples."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..config import Config, Target
from ..metrics import MetricSpec
from ..protocol import tcp_tls
from ..protocol.tcp_tls import Proxy, client_ssl_context
from ..results import CheckResult, ProbeFailure, Reason, Recorder
from .resources import Resources

# What a failed TCP connect (or proxy CONNECT) reads as: a check handed that failure fails the same way.
CONNECT_FAILURES = frozenset({Reason.DNS, Reason.REFUSED, Reason.UNREACHABLE, Reason.TIMEOUT, Reason.PROXY})


@dataclass(slots=True)
class ConnectionHandoff:
    """One TCP connection per target round: the check that opens it hands it to the next one.

    The daemon runs ``reachability`` and then ``tls`` of a target as one round: reachability gives the
    connection it measured to the round instead of closing it, and tls handshakes over it instead of
    connecting again, its result starting where reachability's did, with the same DNS and connect steps
    it would have recorded itself. When reachability could not connect, tls fails the same way without
    a second attempt. Whatever nobody took is closed when the round ends (``close``).
    """

    connection: tcp_tls.Connection | None = None
    opened_by: Recorder | None = None
    # How long the giver had taken when it gave the connection: the next check's time so far. Not the giver's
    # elapsed() when the next check starts: between the two the next check may wait for a slot of the
    # exporter's own concurrency limit, and that wait is neither the target's time nor the check's budget
    # (counted, a busy exporter timed tls out and blamed the endpoint for its own queue).
    given_after: float = 0.0
    failed: CheckResult | None = None  # the previous check's result when it could not connect

    def give(self, connection: tcp_tls.Connection, rec: Recorder) -> None:
        self.close()
        self.connection, self.opened_by, self.given_after = connection, rec, rec.elapsed()

    def after(self, result: CheckResult) -> None:
        """The previous check ended with ``result``: a failed connect is the next check's answer too."""
        if self.connection is None and not result.success and result.reason in CONNECT_FAILURES:
            self.failed = result

    def continue_recording(self, rec: Recorder) -> None:
        """Let ``rec`` start where the round did, with the connect steps the next check would have taken."""
        if self.connection is not None and self.opened_by is not None:
            rec.continue_from(self.opened_by.started, self.given_after, self.opened_by.steps)
        elif self.failed is not None:
            rec.continue_from(self.failed.started, self.failed.duration, self.failed.steps)

    def take(self) -> tcp_tls.Connection | None:
        """The handed connection (now the taker's to close); ProbeFailure when the connect failed."""
        if self.failed is not None:
            raise ProbeFailure(self.failed.reason or Reason.INTERNAL, self.failed.message, self.failed.hint)
        connection, self.connection = self.connection, None
        return connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@dataclass(slots=True)
class ProbeContext:
    config: Config
    rec: Recorder
    timeout: float
    resources: Resources
    # Awaited before each request a check sends (signin): a population sweep's per-credential request budget.
    pace: Callable[[], Awaitable[None]] | None = None
    handoff: ConnectionHandoff | None = None  # set when the check runs in a round sharing one connection

    @classmethod
    def for_target(
        cls, config: Config, target: Target, check: str, resources: Resources, handoff: ConnectionHandoff | None = None
    ) -> ProbeContext:
        rec = Recorder(target.name, check)
        if handoff is not None:
            handoff.continue_recording(rec)
        return cls(config, rec, config.timeout_of(target).total_seconds(), resources, handoff=handoff)

    @property
    def ca_file(self) -> str | None:
        return self.config.defaults.tls.ca_file

    def ssl_context(self, verify: bool = True) -> ssl.SSLContext:
        return client_ssl_context(self.ca_file, verify)

    def proxy(self, target: Target) -> Proxy | None:
        return Proxy.from_url(*self.config.proxy_of(target))

    async def connect(self, target: Target, rec: Recorder, lookup: tcp_tls.Lookup | None = None) -> tcp_tls.Connection:
        """A TCP connection to the target, its name looked up at the target's ``dns`` servers when it has some
        (else the host's resolver), or through its proxy; ``lookup`` replaces that lookup (to watch it).

        In a round, the check's own connection is the one the previous check handed over, if any.
        """
        if self.handoff is not None and rec is self.rec:
            handed = self.handoff.take()
            if handed is not None:
                return handed
        return await tcp_tls.connect(
            target.host, target.port, self.proxy(target), rec, lookup or self.lookup(target), self.lookup_hint(target)
        )

    def release(self, connection: tcp_tls.Connection) -> None:
        """Done with ``connection``: hand it to the next check of the round, or close it."""
        if self.handoff is None:
            connection.close()
        else:
            self.handoff.give(connection, self.rec)

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
