"""APScheduler jobs, one per (target, check), kept in step with the configuration.

First runs start at once, spread by a stable jitter over at most the first interval so that a large
configuration does not fire every check in the same second; then each job keeps a fixed cadence.
APScheduler never starts a job while its previous run is still going (``max_instances=1``): such a
skipped run counts as an overrun. A target's reachability and tls share one job, a round over one TCP
connection (``ONE_CONNECTION_ROUND``); each still gets its own result, and an overrun counts for both.

``/probe`` goes through the scheduler too, so that the account sees at most one run of a (target, check)
at a time and about one per interval, however many clients ask: a run in flight is shared by every
caller, ``/probe`` answers with the last run's result while that run started less than an interval ago,
and a scheduled run that comes less than an interval after a ``/probe`` run adopts that run's result
instead of running again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_SUBMITTED, JobEvent, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.core import HistogramMetricFamily, Metric

from ..checks import CHECKS, Check, checks_for, planned_checks
from ..checks.resources import Resources
from ..config import Config, Target
from ..metrics import Histogram, MetricSpec
from ..results import CheckResult
from .runner import Limiter, execute_limited, execute_round
from .store import ResultStore

log = logging.getLogger(__name__)

SCHEDULING_LAG = MetricSpec(
    "bems_exporter_scheduling_lag_seconds",
    "How late scheduled check runs started compared with their planned time.",
)
PHASE_SLOT = timedelta(milliseconds=100)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SEPARATOR = "\x1f"  # cannot occur in a target name, so job ids split back unambiguously


# Checks of one target that run as one round over one TCP connection: reachability measures the
# lookup and the connect, tls handshakes over that connection (checks.base.ConnectionHandoff). Each
# keeps its own result, metrics and reasons; the target gets one connection and one job per interval.
ONE_CONNECTION_ROUND = ("reachability", "tls")


@dataclass(frozen=True)
class JobSpec:
    target: Target
    check: str
    interval: timedelta
    then: tuple[str, ...] = ()  # checks that follow ``check`` in its round, over its connection

    @property
    def job_id(self) -> str:
        return f"{self.target.name}{_SEPARATOR}{self.check}"

    @property
    def checks(self) -> tuple[str, ...]:
        return (self.check, *self.then)


def job_specs(config: Config, target: Target) -> list[JobSpec]:
    """The target's jobs: one per check, except that reachability and tls share one (a round)."""
    interval = config.interval_of(target)
    names = [check.name for check in checks_for(config, target)]
    if all(name in names for name in ONE_CONNECTION_ROUND):
        first, *then = ONE_CONNECTION_ROUND
        names = [name for name in names if name not in then]
        return [JobSpec(target, name, interval, tuple(then) if name == first else ()) for name in names]
    return [JobSpec(target, name, interval) for name in names]


def lag_families(lag: Histogram) -> Iterator[Metric]:
    family = HistogramMetricFamily(SCHEDULING_LAG.name, SCHEDULING_LAG.help)
    lag.add_to(family, [])
    yield family


def first_run_offset(job_id: str, interval: timedelta) -> timedelta:
    """A stable jitter in [0, interval): the same job starts at the same phase after every restart.

    Phases fall on a grid of ``PHASE_SLOT``: jobs that share a slot start in one wake-up of the event loop
    instead of one wake-up each, and their I/O is served by the same wake-ups too, while the jobs of
    an interval still spread over all of it.
    """
    offset = interval * (zlib.crc32(job_id.encode()) / 2**32)
    return offset - offset % PHASE_SLOT if interval > PHASE_SLOT else offset


ResultCallback = Callable[[CheckResult | None, CheckResult], None]  # (previous, new)


class Scheduler:
    def __init__(self, store: ResultStore, resources: Resources, on_result: ResultCallback | None = None) -> None:
        # APScheduler logs every run at INFO: at thousands of checks a minute that is most of the CPU, and our
        # own logs say what matters per check (and count skipped runs as overruns).
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        self.store = store
        self.resources = resources
        self.config: Config | None = None
        self.limiter: Limiter | None = None
        self.lag = Histogram(LAG_BUCKETS)
        self._on_result = on_result
        self._jobs: dict[str, JobSpec] = {}
        # Runs in flight and /probe results the store has not adopted, by (target, check): a target changed by
        # a reload is another key, so nothing of the old definition is shared with or reused for the new one.
        self._in_flight: dict[tuple[Target, str], asyncio.Future[CheckResult]] = {}
        self._rounds: set[asyncio.Task[None]] = set()  # rounds in flight, for shutdown
        self._on_demand: dict[tuple[Target, str], CheckResult] = {}
        self._aps = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={
                "max_instances": 1,
                "coalesce": True,
                "misfire_grace_time": None,
            },
        )
        self._aps.add_listener(self._on_overrun, EVENT_JOB_MAX_INSTANCES)
        self._aps.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)

    def start(self) -> None:
        self._aps.start()

    def shutdown(self) -> None:
        if self._aps.running:
            self._aps.shutdown(wait=False)
        for task in [*self._rounds, *self._in_flight.values()]:
            task.cancel()

    @property
    def job_count(self) -> int:
        """Scheduled (target, check) pairs: a round's job counts once per check it runs."""
        return sum(len(spec.checks) if (spec := self._jobs.get(job.id)) else 1 for job in self._aps.get_jobs())

    def apply(self, config: Config) -> None:
        """Make the jobs match ``config``: keep unchanged ones (and their cadence), replace the rest."""
        if self.limiter is None:
            self.limiter = Limiter(config)
        else:
            self.limiter.update(config)
        self.config = config
        self.store.configure(config, planned_checks(config))
        configured = set(config.targets)
        self._on_demand = {key: result for key, result in self._on_demand.items() if key[0] in configured}
        wanted = {spec.job_id: spec for target in config.targets for spec in job_specs(config, target)}
        for job_id in [j for j, spec in self._jobs.items() if wanted.get(j) != spec]:
            self._aps.remove_job(job_id)
            del self._jobs[job_id]
        now = datetime.now(UTC)
        for job_id, spec in wanted.items():
            if job_id in self._jobs:
                continue
            first = now + first_run_offset(job_id, spec.interval)
            self._aps.add_job(
                self._run,
                IntervalTrigger(seconds=spec.interval.total_seconds(), start_date=first, timezone=UTC),
                id=job_id,
                name=job_id,
                args=(job_id,),
                next_run_time=first,
            )
            self._jobs[job_id] = spec
        log.info("jobs scheduled", extra={"fields": {"jobs": len(self._jobs), "targets": len(config.targets)}})

    def _track(self, key: tuple[Target, str], run: asyncio.Future[CheckResult]) -> None:
        self._in_flight[key] = run
        run.add_done_callback(lambda done: self._in_flight.pop(key) if self._in_flight.get(key) is done else None)

    async def _execute_once(self, target: Target, check: Check) -> CheckResult:
        """Run ``check`` on ``target``, or join its run in flight: never two runs of one check at once."""
        key = (target, check.name)
        task = self._in_flight.get(key)
        if task is None:
            assert self.config is not None and self.limiter is not None, "apply() first"
            task = asyncio.ensure_future(execute_limited(self.limiter, check, self.config, target, self.resources))
            self._track(key, task)
        return await asyncio.shield(task)  # a caller that goes away leaves the run to the others

    async def _execute_round(self, target: Target, checks: tuple[str, ...]) -> list[CheckResult]:
        """Run ``checks`` on ``target`` as one round over one connection, or, when a run of any of them is in
        flight already (a /probe), join or run each on its own. Each result is there to join as soon as known."""
        if any((target, name) in self._in_flight for name in checks):
            return [await self._execute_once(target, CHECKS[name]) for name in checks]
        assert self.config is not None and self.limiter is not None, "apply() first"
        loop = asyncio.get_running_loop()
        runs = {name: loop.create_future() for name in checks}
        for name, run in runs.items():
            self._track((target, name), run)

        def known(result: CheckResult) -> None:
            if not runs[result.check].done():  # cancelled by shutdown meanwhile
                runs[result.check].set_result(result)

        round_task = asyncio.ensure_future(
            execute_round(self.limiter, [CHECKS[name] for name in checks], self.config, target, self.resources, known)
        )
        self._rounds.add(round_task)

        def ended(done: asyncio.Task[None]) -> None:
            self._rounds.discard(done)
            for run in runs.values():  # a round cancelled by shutdown leaves no caller waiting
                if not run.done():
                    run.cancel()

        round_task.add_done_callback(ended)
        return [await asyncio.shield(run) for run in runs.values()]

    async def on_demand(self, target: Target, check: Check) -> tuple[CheckResult, float | None]:
        """``/probe``'s result for (target, check), and its age in seconds when it is an earlier run's (else None).

        The last run, scheduled or on demand, is reused while it started less than an interval ago.
        """
        assert self.config is not None, "apply() first"
        key = (target, check.name)
        runs = (self.store.latest.get((target.name, check.name)), self._on_demand.get(key))
        known = [result for result in runs if result is not None]
        if known:
            last = max(known, key=lambda result: result.started)
            age = max(0.0, time.time() - last.started)
            if age < self.config.interval_of(target).total_seconds():
                return last, age
        result = await self._execute_once(target, check)
        self._on_demand[key] = result
        return result, None

    def _adoptable(self, spec: JobSpec, check: str) -> CheckResult | None:
        """A /probe run of ``check`` that started less than an interval ago, to stand for this run."""
        adopted = self._on_demand.pop((spec.target, check), None)
        recorded = self.store.latest.get((spec.target.name, check))
        fresh = adopted is not None and time.time() - adopted.started < spec.interval.total_seconds()
        return adopted if fresh and adopted is not recorded else None  # recorded already: a shared run

    async def _scheduled_result(self, spec: JobSpec) -> CheckResult:
        """A /probe run that started less than an interval ago stands for this run; else run (or join) it."""
        return self._adoptable(spec, spec.check) or await self._execute_once(spec.target, CHECKS[spec.check])

    async def _scheduled_results(self, spec: JobSpec) -> list[CheckResult]:
        """The results of every check of the job: adopted, or run, as one round when none was adopted."""
        if not spec.then:
            return [await self._scheduled_result(spec)]
        adopted = {name: self._adoptable(spec, name) for name in spec.checks}
        if not any(adopted.values()):
            return await self._execute_round(spec.target, spec.checks)
        return [adopted[name] or await self._execute_once(spec.target, CHECKS[name]) for name in spec.checks]

    async def _run(self, job_id: str) -> None:
        spec, config, limiter = self._jobs.get(job_id), self.config, self.limiter
        if spec is None or config is None or limiter is None:
            return  # removed by a reload between submission and start
        try:
            results = await self._scheduled_results(spec)
        except asyncio.CancelledError:
            # Only shutdown cancels a run (timeouts end inside execute): stop quietly, not as a job error.
            log.debug(
                "check cancelled by shutdown", extra={"fields": {"target": spec.target.name, "check": spec.check}}
            )
            return
        if self._jobs.get(job_id) is not spec:
            return  # a reload changed or removed the target while this run was in flight
        for result in results:
            previous = self.store.latest.get((result.target, result.check))
            if self.store.record(result) and self._on_result is not None:
                self._on_result(previous, result)

    def _on_overrun(self, event: JobEvent) -> None:
        target, _, check = event.job_id.partition(_SEPARATOR)
        spec = self._jobs.get(event.job_id)
        for name in spec.checks if spec is not None else (check,):
            self.store.count_overrun(target, name)
            log.warning(
                "check still running when due again: run skipped", extra={"fields": {"target": target, "check": name}}
            )

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        planned = event.scheduled_run_times[-1].timestamp()
        self.lag.observe(max(0.0, time.time() - planned))
