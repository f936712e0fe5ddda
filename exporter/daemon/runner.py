"""Running one check: concurrency limits, the timeout, and turning every outcome into a result."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TypeVar

from ..checks import Check, ProbeContext
from ..checks.base import ConnectionHandoff
from ..checks.resources import Resources
from ..config import Config, Target
from ..results import CheckResult, ProbeFailure, Reason

log = logging.getLogger(__name__)
T = TypeVar("T")


class Limiter:
    """A global bound on checks in flight and a per-credential bound on requests as one account.

    The BEMS service account is shared with production BEMS: Exchange throttles per account, so the
    exporter must never be the reason BEMS gets throttled.
    """

    def __init__(self, config: Config) -> None:
        self._global = asyncio.Semaphore(config.limits.global_concurrency)
        self._global_size = config.limits.global_concurrency
        self._per_credential: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self.in_flight: dict[str, int] = {}  # credential -> requests now, for tests and metrics
        self.update(config)

    def update(self, config: Config) -> None:
        """Adopt a reloaded config's limits; unchanged limits keep their semaphores (and waiters)."""
        if config.limits.global_concurrency != self._global_size:
            self._global = asyncio.Semaphore(config.limits.global_concurrency)
            self._global_size = config.limits.global_concurrency
        for name, credential in config.credentials.items():
            size = credential.max_concurrency or config.limits.per_credential_concurrency
            if self._per_credential.get(name, (None,))[0] != size:
                self._per_credential[name] = (size, asyncio.Semaphore(size))

    async def run(self, credential: str | None, work: Callable[[], Awaitable[T]]) -> T:
        """Await ``work()`` in a global slot and, for a credential, in one of its slots.

        The credential's slot comes first: a check queued behind its account's bound is not in flight, and
        holding a global slot while it waits would let one busy account's queue take every global slot and
        starve the checks of every other account and those that sign in as nobody (tls, reachability).
        Always in this order, so two checks never hold each other's slot. Plain ``async with`` on the
        semaphores: this runs once per check, thousands of times a minute.
        """
        if credential is None:
            async with self._global:
                return await work()
        async with self._per_credential[credential][1], self._global:
            self.in_flight[credential] = self.in_flight.get(credential, 0) + 1
            try:
                return await work()
            finally:
                self.in_flight[credential] -= 1


# Left between the end of a run and the next one's start, for the scheduler's own lateness (a start on the
# phase grid, a busy loop): a run still going when its next is due makes APScheduler skip that one (an
# overrun), so a hanging server with the timeout at the interval would get half its runs and page the
# exporter's owner for Exchange's fault. A second at most, as blackbox_exporter keeps half a second of
# Prometheus' scrape timeout; a quarter of the short intervals of tests and benchmarks.
RUN_END_MARGIN = 0.25  # of the interval
MAX_RUN_END_MARGIN = 1.0  # seconds


def run_limit(interval: timedelta) -> float:
    """How long one run may take, in seconds: it ends before the next run is due."""
    seconds = interval.total_seconds()
    return seconds - min(seconds * RUN_END_MARGIN, MAX_RUN_END_MARGIN)


async def execute(
    check: Check, config: Config, target: Target, resources: Resources, handoff: ConnectionHandoff | None = None
) -> CheckResult:
    """Run one check under its timeout; whatever happens, return a result (never raise).

    With a ``handoff`` the check goes on where the round's previous check left off: the time that one
    took to connect counts against this check's budget, as it would had the check connected itself.
    """
    ctx = ProbeContext.for_target(config, target, check.name, resources, handoff)
    budget = min(ctx.timeout * check.requests(config, target), run_limit(config.interval_of(target)))
    try:
        async with asyncio.timeout(max(0.0, budget - ctx.rec.elapsed()) if handoff is not None else budget):
            return await check.probe(target, ctx)
    except ProbeFailure as failure:
        return ctx.rec.failed(failure.reason, failure.message, failure.hint)
    except TimeoutError:
        stuck = ctx.rec.steps[-1] if ctx.rec.steps else None
        return ctx.rec.failed(
            Reason.TIMEOUT,
            f"{stuck.name if stuck else 'the check'} did not finish within {budget:g}s",
            (stuck.hint if stuck else "")
            or f"{target.host}:{target.port} does not answer in time: look for a firewall that drops packets, "
            "an overloaded server, or raise the target's timeout",
        )
    except Exception as err:  # a bug in a probe must not kill the scheduler
        log.exception(
            "check raised an unexpected error", extra={"fields": {"target": target.name, "check": check.name}}
        )
        return ctx.rec.failed(Reason.INTERNAL, f"internal error: {type(err).__name__}")


async def execute_limited(
    limiter: Limiter,
    check: Check,
    config: Config,
    target: Target,
    resources: Resources,
    handoff: ConnectionHandoff | None = None,
) -> CheckResult:
    credential = target.credential if check.uses_credential else None
    return await limiter.run(credential, lambda: execute(check, config, target, resources, handoff))


async def execute_round(
    limiter: Limiter,
    checks: Sequence[Check],
    config: Config,
    target: Target,
    resources: Resources,
    on_result: Callable[[CheckResult], None],
) -> None:
    """Run ``checks`` one after another over one TCP connection (``ConnectionHandoff``), each result
    passed to ``on_result`` as soon as it is known; the connection is closed when the round ends."""
    handoff = ConnectionHandoff()
    try:
        for check in checks:
            result = await execute_limited(limiter, check, config, target, resources, handoff)
            handoff.after(result)
            on_result(result)
    finally:
        handoff.close()
