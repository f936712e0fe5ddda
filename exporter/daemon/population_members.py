"""Each population's members, read from its source, and the source's own state.

A read that fails keeps the last good list (the sweep goes on checking it) and records why, for
``bems_population_source_up`` and the status page. A file is read again when its modification time or size
changes (checked at every sweep step: a ``stat``); LDAP and Entra sources once per ``refresh_interval``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..checks.resources import Resources
from ..config import Config, EntraCredential, Population
from ..config.clouds import ENDPOINTS
from ..protocol import graph_groups
from ..protocol.entra_tokens import Resource, TokenError, scope_of
from ..protocol.http_client import HttpResponse
from ..protocol.population_sources import SourceError, SourceReason, read_address_file

log = logging.getLogger(__name__)


@dataclass
class SourceState:
    members: tuple[str, ...] = ()
    up: bool | None = None  # None: never read yet
    reason: SourceReason | None = None
    message: str = ""
    hint: str = ""
    last_attempt: float = 0.0  # the monotonic clock's
    last_success_time: float = 0.0  # Unix time
    signature: tuple[int, int] | None = None  # a file's (mtime_ns, size) when last read


@dataclass
class PopulationSources:
    resources: Resources  # its monotonic clock times refresh_interval
    states: dict[str, SourceState] = field(default_factory=dict)

    def monotonic(self) -> float:
        return self.resources.monotonic()

    def configure(self, config: Config) -> None:
        """Forget populations that left the configuration; a changed source is read again at its next step."""
        self.states = {name: state for name, state in self.states.items() if name in config.populations}

    def state(self, name: str) -> SourceState:
        return self.states.setdefault(name, SourceState())

    def due(self, name: str, population: Population) -> bool:
        state = self.state(name)
        if state.up is None:
            return True
        if population.file is not None:
            return _signature(population.file.path) != state.signature or not state.up
        return self.monotonic() - state.last_attempt >= population.refresh_interval.total_seconds()

    async def refresh(self, config: Config, name: str) -> SourceState:
        """Read the population's source when it is due; its state either way."""
        population = config.populations[name]
        state = self.state(name)
        if not self.due(name, population):
            return state
        state.last_attempt = self.monotonic()
        try:
            members, signature = await self._read(config, population)
        except SourceError as err:
            if state.up is not False or state.reason != err.reason:
                fields = {"population": name, "reason": err.reason.value, "err": err.message}
                log.warning("population source failing; keeping its last good list", extra={"fields": fields})
            state.up, state.reason, state.message, state.hint = False, err.reason, err.message, err.hint
            return state
        if state.up is not True or len(members) != len(state.members):
            log.info("population read", extra={"fields": {"population": name, "mailboxes": len(members)}})
        state.members, state.signature = members, signature
        state.up, state.reason, state.message, state.hint = True, None, "", ""
        state.last_success_time = time.time()
        return state

    async def _read(self, config: Config, population: Population) -> tuple[tuple[str, ...], tuple[int, int] | None]:
        if population.file is not None:
            path = population.file.path
            signature = _signature(path)
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                detail = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
                raise SourceError(SourceReason.UNREADABLE, f"cannot read {path}: {detail}") from None
            return read_address_file(text, path, population.file.column), signature
        if population.ldap is not None:
            # Imported on first use: ldap3 and its pyasn1 are 4.4 MiB of RSS in a daemon that has no LDAP
            # population (measured beside the daemon's other imports; docs/performance.md).
            from ..protocol import ldap_directory

            return await self.resources.run_blocking(ldap_directory.search, population.ldap), None
        assert population.entra_group is not None
        return await self._entra_group(config, population), None

    async def _entra_group(self, config: Config, population: Population) -> tuple[str, ...]:
        source = population.entra_group
        assert source is not None
        credential = config.credentials[source.credential]
        assert isinstance(credential, EntraCredential)
        timeout = config.defaults.timeout.total_seconds()
        ca_file = config.defaults.tls.ca_file
        try:
            token = await self.resources.run_blocking(
                self.resources.entra.acquire, source.credential, credential, scope_of(credential, Resource.GRAPH),
                ca_file=ca_file, proxy=None, timeout=timeout,
            )  # fmt: skip
        except TokenError as err:
            raise SourceError(SourceReason.TOKEN, f"no token from Entra ID: {err}") from None
        graph_url = _graph_url(config, source.credential)
        host = urlsplit(graph_url).netloc
        if (wait := self.resources.backoff.remaining(source.credential, host)) > 0:
            raise SourceError(SourceReason.THROTTLED, f"not sent: Graph asked to back off for {wait:.0f} more s")
        headers = {"Authorization": f"Bearer {token.access_token}", "Accept": "application/json"}

        async def get(url: str) -> HttpResponse:
            return await self.resources.http.request("GET", url, ca_file=ca_file, proxy=None, headers=headers)

        try:
            return await graph_groups.transitive_members(get, graph_url, source.group_id)
        except graph_groups.GraphThrottled as throttled:
            self.resources.backoff.hold(source.credential, host, throttled.seconds)
            raise


def _graph_url(config: Config, credential_name: str) -> str:
    credential = config.credentials[credential_name]
    assert isinstance(credential, EntraCredential)
    return ENDPOINTS[credential.cloud].graph_url


def _signature(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size
