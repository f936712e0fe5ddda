"""What every check gets: the target, its effective settings, and a recorder for steps and samples."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..config import Config, Target
from ..metrics import MetricSpec
from ..protocol.tcp_tls import Proxy, client_ssl_context
from ..results import CheckResult, Recorder
from .resources import Resources


@dataclass(slots=True)
class ProbeContext:
    config: Config
    rec: Recorder
    timeout: float
    resources: Resources

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


def every_target(_config: Config, _target: Target) -> bool:
    return True
