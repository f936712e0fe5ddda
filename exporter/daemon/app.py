"""The running exporter: the loaded configuration, the scheduler, the results, and reloads."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

from prometheus_client.core import Metric

from .. import __version__, logs
from ..checks import checks_for
from ..checks.push import end_graph_subscriptions
from ..checks.resources import Resources
from ..config import Config, ConfigError, load_config
from ..results import CheckResult
from .listener import Listener
from .scheduler import Scheduler, lag_families
from .store import ResultStore
from .sweep import Sweeps, population_families

log = logging.getLogger(__name__)


def revision() -> str:
    """The git commit this code runs from, when it runs from a checkout; else ``unknown``."""
    root = Path(__file__).resolve().parents[2]  # exporter/daemon/app.py: the checkout holds exporter/
    if not (root / ".git").exists():  # installed: git would answer for whatever repository encloses it
        return "unknown"
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


@dataclass
class ExporterStatus:
    """Exporter-level facts the web side's collector reports beside the check results."""

    version: str
    revision: str
    config: Config | None = None
    reload_successful: bool = False
    reload_success_timestamp: float = 0.0
    extra: list[Callable[[], Iterator[Metric]]] = field(default_factory=list)  # the scheduler's and resources' families


# Something else reloaded with the configuration (the web side's web config): it logs its own error, keeps
# what it runs on error, and returns the error.
ReloadHook = Callable[[], Awaitable[ConfigError | None]]


class ProbeAnswer(NamedTuple):
    store: ResultStore
    results: list[CheckResult]
    cached_age: float | None  # seconds since the oldest reused run started; None when every check ran for this call


class Exporter:
    def __init__(
        self, config_file: str, shard: tuple[int, int] | None = None, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        """``monotonic`` times back-off, suspensions and push delivery (Resources): tests pass a fake clock's."""
        self.config_file = config_file
        self.shard = shard  # --shard overrides the file's shard key
        self.store = ResultStore()
        self.status = ExporterStatus(__version__, revision())
        self.resources = Resources(monotonic)
        self.listener = Listener(self.resources.push)
        self.scheduler = Scheduler(self.store, self.resources, on_result=self._log_result)
        self.status.extra.append(partial(lag_families, self.scheduler.lag))
        self.status.extra.append(self.resources.push.families)
        self.status.extra.append(self.resources.suspensions.families)
        self.sweeps = Sweeps(self.resources)
        self.status.extra.append(partial(population_families, self.sweeps))
        self._reload_lock = asyncio.Lock()
        self._ready = False
        self.reload_hooks: list[ReloadHook] = []  # run by reload() after the configuration, in order

    def add_reload_hook(self, hook: ReloadHook) -> None:
        self.reload_hooks.append(hook)

    def remove_reload_hook(self, hook: ReloadHook) -> None:
        self.reload_hooks.remove(hook)

    @property
    def config(self) -> Config:
        assert self.status.config is not None, "load() first"
        return self.status.config

    def load(self) -> None:
        """The first load: a bad file is fatal (raises ConfigError)."""
        self._apply(self._read())

    def _read(self) -> Config:
        """The configuration file, cut down to this replica's share when sharded."""
        config = load_config(self.config_file)
        if self.shard is not None:
            config = config.model_copy(update={"shard": self.shard})
        return config.sharded()

    async def start(self) -> None:
        """Start the checks and, when push probes are configured, the notification listener."""
        await self.listener.apply(self.config.notifications)
        self.scheduler.start()
        self.sweeps.start()

    async def stop(self) -> None:
        self.scheduler.shutdown()
        await self.sweeps.stop()  # each writes its progress for the next start
        await end_graph_subscriptions(self.config, self.resources)
        await self.listener.stop()
        await self.resources.close()

    async def reload(self) -> ConfigError | None:
        """Load the file again, then run the reload hooks; on error each keeps running its last good one.

        Each is tried whatever the others' outcome, and logs its own error; the configuration file's error
        is returned first, then the hooks' in order.
        """
        async with self._reload_lock:
            errors = [await self._reload_config()]
            for hook in list(self.reload_hooks):
                errors.append(await hook())
            return next((error for error in errors if error is not None), None)

    async def _reload_config(self) -> ConfigError | None:
        try:
            config = self._read()
        except ConfigError as err:
            self.status.reload_successful = False
            log.error(
                "configuration reload failed; keeping the running configuration",
                extra={"fields": {"err": str(err)}},
            )
            return err
        self._apply(config)
        try:
            await self.listener.apply(config.notifications)
        except OSError as err:  # the new listen address is taken: callbacks cannot arrive
            log.error("cannot start the notification listener", extra={"fields": {"err": str(err)}})
        log.info("configuration reloaded", extra={"fields": {"file": self.config_file}})
        return None

    def _apply(self, config: Config) -> None:
        logs.replace_secrets(config.secrets())
        for warning in config.secret_file_warnings():
            log.warning("insecure secret", extra={"fields": {"file": self.config_file, "err": warning}})
        self.status.config = config
        self.resources.push.configure(config)
        self.resources.suspensions.configure(config)
        self.scheduler.apply(config)
        assert self.scheduler.limiter is not None
        self.sweeps.apply(config, self.scheduler.limiter)
        self.status.reload_successful = True
        self.status.reload_success_timestamp = time.time()

    def ready(self) -> bool:
        # Latched: a reload that adds targets must not flap readiness (and drop the pod from its Service).
        if not self._ready:
            self._ready = self.status.config is not None and self.store.first_round_done()
        return self._ready

    async def probe_now(self, target_name: str) -> ProbeAnswer | None:
        """A target's results for ``/probe``, in a fresh store (the scheduled one is left alone).

        Each check runs now unless its last run started less than an interval ago (then that run's result is
        reused) or is in flight (then it is shared): see the scheduler.
        """
        config = self.config
        target = config.targets_by_name().get(target_name)
        if target is None or self.scheduler.config is None:
            return None
        checks = checks_for(config, target)
        answers = await asyncio.gather(*(self.scheduler.on_demand(target, c) for c in checks))
        store = ResultStore()
        store.targets = {target.name: target}
        store.checks = {target.name: tuple(c.name for c in checks)}
        for result, _ in answers:
            store.record(result)
        ages = [age for _, age in answers if age is not None]
        return ProbeAnswer(store, [result for result, _ in answers], max(ages) if ages else None)

    def _log_result(self, previous: CheckResult | None, result: CheckResult) -> None:
        fields = {"target": result.target, "check": result.check, "duration": round(result.duration, 4)}
        if result.success:
            if previous is not None and not previous.success:
                log.info("check recovered", extra={"fields": fields})
            else:
                log.debug("check passed", extra={"fields": fields})
            return
        fields |= {"reason": result.reason.value if result.reason else "", "err": result.message}
        changed = previous is None or previous.success or previous.reason != result.reason
        log.log(logging.WARNING if changed else logging.DEBUG, "check failed", extra={"fields": fields})
