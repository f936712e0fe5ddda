"""Population sweeps: every mailbox of a population checked once per ``sweep_interval``, within a budget.

One sweep per (target, population). Its mailboxes are spread evenly across the interval (mailbox ``i`` of
``N`` is due ``i/N`` of the way through), one at a time, in the per-credential concurrency slot, and every
request passes the credential's :class:`RequestBudget` (``limits.per_credential_requests_per_minute`` in any
60 s) before it is sent. A back-off Exchange or Graph asks for holds the sweep: nothing is sent as the
credential where it applies until it ends (signin's back-off), and the mailbox is tried again after it.

Per mailbox the check is what BEMS needs on that side: impersonation (on-premises) or application access
(Exchange Online) through EWS, or the inbox through Graph. A mailbox an on-premises EWS does not host is asked
of Autodiscover: one that Autodiscover sends elsewhere (Exchange Online, after a migration) is ``moved``.

Progress is a small JSON file per sweep in ``sweeps.state_directory``, written atomically (a temporary file
renamed over the old), so a restart resumes the sweep, and keeps the failing mailboxes and since when.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.core import GaugeMetricFamily, Metric

from ..checks import CHECKS, Check, ProbeContext, signin
from ..checks.resources import Resources
from ..config import Config, Exchange, Kind, Target
from ..config.schema import mailbox_key
from ..metrics import MetricSpec
from ..protocol import autodiscover_wire
from ..protocol.entra_tokens import Resource
from ..results import ProbeFailure, Reason
from .population_members import PopulationSources
from .runner import Limiter

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
ERROR_PAUSE_SECONDS = 60.0
HISTORY_SWEEPS = 30  # complete sweeps the trend keeps (a month of daily sweeps)
# Between state writes (and at the end of a sweep, and on shutdown): a sweep of 50,000 holds a few MB, so by
# time rather than by mailbox; a crash loses at most this much of the sweep, checked again after the restart.
SAVE_EVERY_SECONDS = 30.0
STATE_VERSION = 1
# Which check a target's sweep runs: the one whose single request is what BEMS needs of each mailbox there.
SWEPT_CHECKS = {Kind.EWS: "impersonation", Kind.GRAPH: "graph"}
MOVED_HINT = (
    "Autodiscover sends this user to {where}: the mailbox was moved (to Exchange Online, say). BEMS must reach it "
    "there: check the BEMS Exchange settings for the other side (Graph or EWS online), and this target's population"
)


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    MOVED = "moved"


class RequestBudget:
    """At most ``per_minute`` requests a credential in any ``WINDOW_SECONDS``: each request takes a slot, and
    waits when the window is full until its oldest request leaves it. Clocked by the event loop (which the
    tests' fake clock moves)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._sent: dict[str, deque[float]] = {}
        self.waits = 0  # requests that waited for the window, for tests and the bench

    async def take(self, credential: str, count: int = 1) -> None:
        """``count`` slots, waiting until the window has room for all of them."""
        loop = asyncio.get_running_loop()
        sent = self._sent.setdefault(credential, deque())
        count = min(count, self.per_minute)
        while True:
            now = loop.time()
            while sent and sent[0] <= now - WINDOW_SECONDS:
                sent.popleft()
            if len(sent) + count <= self.per_minute:
                sent.extend([now] * count)
                return
            self.waits += 1
            await asyncio.sleep(sent[len(sent) + count - self.per_minute - 1] + WINDOW_SECONDS - now)

    def refund(self, credential: str, count: int) -> None:
        """Give back slots taken and not used (the latest ones: the window only gets emptier)."""
        sent = self._sent.get(credential)
        for _ in range(min(count, len(sent or ()))):
            assert sent is not None
            sent.pop()


class Reservation:
    """The slots a mailbox's check took before its timeout started (so that waiting for the budget never reads
    as a slow Exchange); a request past them takes a slot of its own."""

    def __init__(self, budget: RequestBudget, credential: str, slots: int) -> None:
        self.budget, self.credential, self.unused = budget, credential, slots

    async def pace(self) -> None:
        if self.unused > 0:
            self.unused -= 1
        else:
            await self.budget.take(self.credential)

    def release(self) -> None:
        self.budget.refund(self.credential, self.unused)
        self.unused = 0


@dataclass
class Failing:
    reason: str  # a Reason, or "moved"
    since: float  # Unix time this reason was first seen for the mailbox, in a row
    message: str
    hint: str

    def as_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "since": self.since, "message": self.message, "hint": self.hint}


@dataclass
class SweepState:
    """One sweep's progress (what the state file holds) and its last complete round."""

    target: str
    population: str
    started: float = 0.0  # Unix time the current sweep began (0: not yet)
    done: dict[str, tuple[str, str]] = field(default_factory=dict)  # casefolded mailbox -> (outcome, reason)
    failing: dict[str, Failing] = field(default_factory=dict)  # mailbox -> why, across sweeps
    last_complete: float = 0.0
    last_duration: float = 0.0
    # The trend: (completed at, mailboxes swept, failing) of the last complete sweeps, oldest first.
    history: list[tuple[float, int, int]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION, "target": self.target, "population": self.population,
            "started": self.started, "done": self.done, "last_complete": self.last_complete,
            "last_duration": self.last_duration, "failing": {m: f.as_json() for m, f in self.failing.items()},
            "history": self.history,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepState:
        state = cls(str(data["target"]), str(data["population"]), float(data["started"]))
        state.done = {str(m): (str(o), str(r)) for m, (o, r) in data["done"].items()}
        state.failing = {str(m): Failing(**f) for m, f in data["failing"].items()}
        state.last_complete, state.last_duration = float(data["last_complete"]), float(data["last_duration"])
        state.history = [(float(at), int(swept), int(failing)) for at, swept, failing in data.get("history", [])]
        return state

    def counts(self) -> Counter[tuple[str, str]]:
        """Mailboxes checked in the current sweep, by (outcome, reason)."""
        return Counter(self.done.values())


def state_path(directory: str, target: str, population: str) -> Path:
    return Path(directory) / f"sweep-{target}-{population}.json"


def write_state(path: Path, state: SweepState) -> None:
    """Atomically: a reader (or a restart after a crash) sees the old file or the new one, never half."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        json.dump(state.as_json(), file, separators=(",", ":"))
        file.flush()
        os.fsync(file.fileno())
    os.replace(file.name, path)


def read_state(path: Path, target: str, population: str) -> SweepState:
    """The saved progress, or a fresh state when there is none or it is unreadable (logged)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") == STATE_VERSION and (data["target"], data["population"]) == (target, population):
            return SweepState.from_json(data)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as err:
        fields = {"file": str(path), "err": str(err)}
        log.warning("sweep state unreadable: starting the sweep over", extra={"fields": fields})
    return SweepState(target, population)


def _elsewhere(hosts: set[str], found: autodiscover_wire.Found, location: str | None) -> str | None:
    """Where Autodiscover sends a mailbox, when that is not this side's own EWS or Autodiscover host."""
    if found.redirect_address:
        return found.redirect_address
    for url in (location, found.redirect_url, found.ews_url):
        if url and (urlsplit(url).hostname or "").lower() not in hosts:
            return url
    return None


async def autodiscover_side(ctx: ProbeContext, target: Target, mailbox: str) -> str | None:
    """Where on-premises Autodiscover sends ``mailbox`` (one POX request), if elsewhere than this side.

    Asked of the configured on-premises ``autodiscover`` target (its credential and first method, as BEMS
    would), or of the EWS host's own ``/autodiscover`` when none is configured.
    """
    autodiscover = next(
        (t for t in ctx.config.targets if t.kind == Kind.AUTODISCOVER and t.exchange == Exchange.ONPREM), target
    )
    method = signin.method_for(ctx.config, autodiscover) if autodiscover.credential else None
    response = await signin.send(
        ctx, autodiscover, autodiscover_wire.pox_url(autodiscover.url), method=method,
        body=autodiscover_wire.pox_request(mailbox), headers=dict(autodiscover_wire.POX_HEADERS),
        scope=Resource.EXCHANGE,
    )  # fmt: skip
    hosts = {target.host.lower(), autodiscover.host.lower()}
    if response.status in (301, 302, 303, 307, 308):
        return _elsewhere(hosts, autodiscover_wire.Found(), response.header("Location"))
    if response.status != 200:
        return None
    try:
        return _elsewhere(hosts, autodiscover_wire.read_pox(response), None)
    except ProbeFailure:
        return None  # not a settings answer (the mailbox is unknown there too): not evidence of a move


class Sweep:
    """The task that sweeps one (target, population)."""

    def __init__(self, owner: Sweeps, target: Target, population: str, state: SweepState | None = None) -> None:
        """``state``: the progress of the sweep this one replaces (a reload changed the target), else the file's."""
        self.owner, self.target, self.population = owner, target, population
        self.check: Check = CHECKS[SWEPT_CHECKS[target.kind]]
        directory = owner.config.sweeps.state_directory
        self.path = state_path(directory, target.name, population) if directory else None
        if state is None:
            state = read_state(self.path, target.name, population) if self.path else SweepState(target.name, population)
        self.state = state
        self.task: asyncio.Task[None] | None = None
        self._last_save = 0.0  # the loop's clock
        self._listed: tuple[str, ...] = ()  # the source's list that _members was worked out from
        self._owned_by: Config | None = None
        self._members: tuple[str, ...] = ()
        self._cursor = 0

    @property
    def interval(self) -> float:
        return self.owner.config.populations[self.population].sweep_interval.total_seconds()

    def members(self) -> tuple[str, ...]:
        """This shard's share of the source's list, worked out again only when the list is another one (a read
        replaces the tuple): a step runs for every mailbox, and the list may hold tens of thousands."""
        config, listed = self.owner.config, self.owner.sources.state(self.population).members
        if listed is not self._listed or config is not self._owned_by:
            self._members = tuple(m for m in listed if config.owns(mailbox_key(self.target, m)))
            self._listed, self._owned_by, self._cursor = listed, config, 0
        return self._members

    def _next_pending(self, members: tuple[str, ...]) -> str | None:
        """The first mailbox the current sweep has not checked. The sweep goes through the sorted list in order,
        so a cursor that only moves forward finds it (a new list or a new sweep starts it over)."""
        done = self.state.done
        while self._cursor < len(members) and members[self._cursor].casefold() in done:
            self._cursor += 1
        return members[self._cursor] if self._cursor < len(members) else None

    def save(self) -> None:
        if self.path is not None:
            write_state(self.path, self.state)
        self._last_save = asyncio.get_running_loop().time()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.step()
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception:  # a bug must not end the sweep for good: log it, go on after a pause
                    log.exception("population sweep step failed", extra={"fields": {"target": self.target.name}})
                    await asyncio.sleep(ERROR_PAUSE_SECONDS)
        finally:
            self.save()

    async def step(self) -> None:
        """Check the next mailbox when it is due (or start the next sweep when this one is done)."""
        await self.owner.sources.refresh(self.owner.config, self.population)
        members = self.members()
        if not members:  # never read yet (the source failing from the start), or none of it is this shard's
            await asyncio.sleep(self.owner.config.populations[self.population].refresh_interval.total_seconds())
            return
        state = self.state
        if not state.started:
            state.started = time.time()
        mailbox = self._next_pending(members)
        if mailbox is None:
            self._complete(members)
            await asyncio.sleep(max(0.0, state.started - time.time()))
            return
        due = state.started + self.interval * min(len(state.done), len(members)) / len(members)
        if (wait := due - time.time()) > 0:
            await asyncio.sleep(wait)
        outcome = await self.check_one(mailbox)
        if outcome is not None:  # None: held back by a back-off, tried again once it ends
            self._record(mailbox, *outcome)

    def _complete(self, members: tuple[str, ...]) -> None:
        state, now = self.state, time.time()
        state.last_complete, state.last_duration = now, now - state.started
        known = {m.casefold() for m in members}
        state.failing = {m: f for m, f in state.failing.items() if m.casefold() in known}
        state.history = [*state.history, (now, len(members), len(state.failing))][-HISTORY_SWEEPS:]
        log.info("population sweep complete", extra={"fields": {
            "target": self.target.name, "population": self.population, "mailboxes": len(members),
            "failing": len(state.failing), "duration": round(state.last_duration, 1)}})  # fmt: skip
        state.done = {}
        self._cursor = 0
        state.started = max(now, state.started + self.interval)  # the next sweep: on cadence, never in the past
        self.save()

    def _record(self, mailbox: str, outcome: Outcome, reason: str, message: str, hint: str) -> None:
        state = self.state
        state.done[mailbox.casefold()] = (outcome.value, reason)
        if outcome == Outcome.PASSED:
            state.failing.pop(mailbox, None)
        else:
            previous = state.failing.get(mailbox)
            since = previous.since if previous is not None and previous.reason == reason else time.time()
            state.failing[mailbox] = Failing(reason, since, message[:300], hint[:600])
        if asyncio.get_running_loop().time() - self._last_save >= SAVE_EVERY_SECONDS:
            self.save()

    async def check_one(self, mailbox: str) -> tuple[Outcome, str, str, str, str] | None:
        owner, target = self.owner, self.target
        credential = target.credential
        assert credential is not None and owner.limiter is not None
        ctx = ProbeContext.for_target(owner.config, target, "sweep", owner.resources)
        # The check's request, and the one that may follow it: Autodiscover for a mailbox on-premises EWS does
        # not host, the organisation-wide evidence for Exchange Online's bare 403.
        slots = 2 if target.kind == Kind.EWS else 1
        reservation = Reservation(owner.budget, credential, slots)
        await owner.budget.take(credential, slots)
        ctx.pace = reservation.pace
        try:
            async with asyncio.timeout(ctx.timeout * 2):  # the check's request, and Autodiscover's after it
                await owner.limiter.run(credential, lambda: self._ask(ctx, mailbox))
        except ProbeFailure as failure:
            if failure.reason == Reason.THROTTLED:
                await self._wait_out_backoff()
                return None
            return Outcome.FAILED, failure.reason.value, failure.message, failure.hint
        except TimeoutError:
            return Outcome.FAILED, Reason.TIMEOUT.value, f"no answer within {ctx.timeout * 2:g}s", ""
        except _Moved as moved:
            return Outcome.MOVED, Outcome.MOVED.value, f"Autodiscover sends {mailbox} to {moved.where}", (
                MOVED_HINT.format(where=moved.where))  # fmt: skip
        finally:
            reservation.release()
        return Outcome.PASSED, "", "", ""

    async def _ask(self, ctx: ProbeContext, mailbox: str) -> None:
        assert self.check.sweep is not None
        try:
            await self.check.sweep(ctx, self.target, mailbox)
        except ProbeFailure as failure:
            onprem_ews = self.target.kind == Kind.EWS and self.target.exchange == Exchange.ONPREM
            if failure.reason != Reason.MAILBOX_NOT_FOUND or not onprem_ews:
                raise
            where = await autodiscover_side(ctx, self.target, mailbox)
            if where is None:
                raise
            raise _Moved(where) from None

    async def _wait_out_backoff(self) -> None:
        """Sleep until no back-off holds the target's host for the credential (at least a second)."""
        backoff, host = self.owner.resources.backoff, (urlsplit(self.target.url).hostname or "").lower()
        await asyncio.sleep(max(1.0, backoff.remaining(self.target.credential or "", host)))


class _Moved(Exception):
    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


class Sweeps:
    """Every (target, population) sweep of the running configuration, started and stopped with it."""

    def __init__(self, resources: Resources, sources: PopulationSources | None = None) -> None:
        self.resources = resources
        self.sources = sources or PopulationSources(resources)
        self.sweeps: dict[tuple[str, str], Sweep] = {}
        self._config: Config | None = None
        self.limiter: Limiter | None = None
        self.budget = RequestBudget(60)
        self._running = False

    def apply(self, config: Config, limiter: Limiter) -> None:
        """Adopt a configuration: sweeps whose target and population are unchanged go on where they are."""
        self._config, self.limiter = config, limiter
        self.budget.per_minute = config.limits.per_credential_requests_per_minute
        self.sources.configure(config)
        wanted = {(t.name, t.population): t for t in config.targets if t.population is not None}
        replaced: dict[tuple[str, str], SweepState] = {}
        for key in [k for k, sweep in self.sweeps.items() if wanted.get(k) != sweep.target]:
            old = self.sweeps.pop(key)
            self._stop(old)
            replaced[key] = old.state  # a target changed by a reload goes on with the same sweep
        for key, target in wanted.items():
            if key not in self.sweeps:
                self.sweeps[key] = Sweep(self, target, key[1], replaced.get(key))
                if self._running:
                    self._start(self.sweeps[key])

    @property
    def config(self) -> Config:
        assert self._config is not None, "apply() first"
        return self._config

    @property
    def configured(self) -> Config | None:
        return self._config

    def start(self) -> None:
        self._running = True
        for sweep in self.sweeps.values():
            self._start(sweep)

    async def stop(self) -> None:
        self._running = False
        tasks = [sweep.task for sweep in self.sweeps.values() if sweep.task is not None]
        for sweep in self.sweeps.values():
            self._stop(sweep)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, sweep: Sweep) -> None:
        sweep.task = asyncio.ensure_future(sweep.run())
        sweep.task.add_done_callback(_log_crash)

    @staticmethod
    def _stop(sweep: Sweep) -> None:
        if sweep.task is not None:
            sweep.task.cancel()

    def by_population(self) -> Iterator[Sweep]:
        return iter(sorted(self.sweeps.values(), key=lambda s: (s.population, s.target.name)))


# Per population (the source) and per (target, population) sweep: a fixed set of series whatever the size.
POPULATION_METRICS = (
    MAILBOXES := MetricSpec(
        "bems_population_mailboxes", "Mailboxes the population's source lists (its last good read).",
        labels=("population",), per_target=False),
    SOURCE_UP := MetricSpec(
        "bems_population_source_up", "1 if the last read of the population's source succeeded, else 0.",
        labels=("population",), per_target=False),
    SOURCE_REASON := MetricSpec(
        "bems_population_source_failure_reason",
        "1 for the reason the last read of the source failed; absent while up.",
        labels=("population", "reason"), per_target=False),
    SOURCE_LAST_SUCCESS := MetricSpec(
        "bems_population_source_last_success_timestamp_seconds", "When the source was last read (Unix time).",
        labels=("population",), per_target=False),
    SWEPT := MetricSpec(
        "bems_population_sweep_mailboxes", "Mailboxes of the population this exporter (shard) sweeps.",
        labels=("population",)),
    CHECKED := MetricSpec(
        "bems_population_checked_mailboxes",
        "Mailboxes checked in the current sweep, by outcome (passed, failed, moved) and reason.",
        labels=("population", "outcome", "reason")),
    FAILING := MetricSpec(
        "bems_population_failing_mailboxes",
        "Mailboxes whose latest check (this sweep or the last) failed or found them moved, by reason.",
        labels=("population", "reason")),
    PROGRESS := MetricSpec(
        "bems_population_sweep_progress_ratio", "How much of the current sweep is done (0 to 1).",
        labels=("population",)),
    DURATION := MetricSpec(
        "bems_population_sweep_duration_seconds", "How long the last complete sweep took.", labels=("population",)),
    LAST_COMPLETE := MetricSpec(
        "bems_population_sweep_last_complete_timestamp_seconds",
        "When the last sweep of the population completed (Unix time; 0: none yet).", labels=("population",)),
    STARTED := MetricSpec(
        "bems_population_sweep_started_timestamp_seconds",
        "When the current sweep began (Unix time; in the future while waiting for the next).",
        labels=("population",)),
    THRESHOLD := MetricSpec(
        "bems_population_failing_share_threshold",
        "The population's alert_failing_share: BEMSExchangePopulationFailingShare fires above it.",
        labels=("population",), per_target=False),
    INTERVAL := MetricSpec(
        "bems_population_sweep_interval_seconds", "The population's sweep_interval: every mailbox once per interval.",
        labels=("population",)),
)  # fmt: skip


def _family(spec: MetricSpec) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.label_names))


def population_families(sweeps: Sweeps) -> Iterator[Metric]:
    """The populations' families, from the sweeps' state only (no I/O: this runs in a scrape)."""
    families = {spec.name: _family(spec) for spec in POPULATION_METRICS}
    config = sweeps.configured
    if config is None:
        yield from families.values()
        return
    for name in config.populations:
        source = sweeps.sources.state(name)
        families[MAILBOXES.name].add_metric([name], len(source.members))
        families[SOURCE_UP.name].add_metric([name], 1.0 if source.up else 0.0)
        if source.reason is not None:
            families[SOURCE_REASON.name].add_metric([name, source.reason.value], 1.0)
        families[SOURCE_LAST_SUCCESS.name].add_metric([name], source.last_success_time)
        families[THRESHOLD.name].add_metric([name], config.populations[name].alert_failing_share)
    for sweep in sweeps.by_population():
        labels = [sweep.target.name, sweep.target.exchange_label, sweep.population]
        state, members = sweep.state, sweep.members()
        families[SWEPT.name].add_metric(labels, len(members))
        for (outcome, reason), count in sorted(state.counts().items()):
            families[CHECKED.name].add_metric([*labels, outcome, reason], count)
        for reason, count in sorted(Counter(f.reason for f in state.failing.values()).items()):
            families[FAILING.name].add_metric([*labels, reason], count)
        families[PROGRESS.name].add_metric(labels, min(1.0, len(state.done) / len(members)) if members else 0.0)
        families[DURATION.name].add_metric(labels, state.last_duration)
        families[LAST_COMPLETE.name].add_metric(labels, state.last_complete)
        families[INTERVAL.name].add_metric(labels, sweep.interval)
        families[STARTED.name].add_metric(labels, state.started)
    yield from families.values()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("population sweep stopped by an error", exc_info=task.exception())
