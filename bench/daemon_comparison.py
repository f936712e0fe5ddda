"""The exporter as deployed beside blackbox_exporter as deployed: CPU per target round, both at once.

The exporter is its console script (``bems-exchange-exporter --config.file ...``) with N targets at
one interval and its default checks (reachability and tls), all on one simulator endpoint; a round is
what a user gets from one target: both results with their timings and the certificate's expiry.
blackbox_exporter probes the same endpoint through ``/probe`` (module tcp + tls, chain verified
against the simulator's CA) at the same rate, paced as a Prometheus scraping N targets would pace it.
Both run during the same window; the CPU of each whole process comes from ``/proc/PID/stat``. The
machine is shared: the ratio of the two within one window is what the report leads with, since other
load slows both alike far more than it moves their ratio; the load average is recorded beside it.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .fixtures import EXPECTED_CHECKS, RunningExporter, RunningSimulator, running_exporter, write_exporter_config
from .processes import ManagedProcess
from .scheduled import read_counters
from .scrape import KeepAliveClient, get
from .tls_comparison import SUCCESS_LINE, RunningBlackbox

READY_TIMEOUT_MARGIN_SECONDS = 30.0
# Probing threads, each on its own kept-alive connection to /probe: a slow probe delays only its own
# thread's next one, and each thread's schedule is fixed in advance (no catching up in bursts).
PROBING_THREADS = 4


@dataclass(frozen=True)
class DaemonRun:
    """One window: both processes' CPU over it and what each completed in it."""

    exporter_cpu_seconds: float
    exporter_rounds: float  # reachability+tls pairs completed in the window (runs / 2)
    exporter_failures: float
    blackbox_cpu_seconds: float
    blackbox_probes: int
    blackbox_failures: int
    window_seconds: float
    load_average: tuple[float, float, float]  # `uptime`'s 1, 5 and 15 minutes, at the window's end

    @property
    def exporter_cpu_ms_per_round(self) -> float:
        return 1000 * self.exporter_cpu_seconds / self.exporter_rounds if self.exporter_rounds else float("nan")

    @property
    def blackbox_cpu_ms_per_probe(self) -> float:
        return 1000 * self.blackbox_cpu_seconds / self.blackbox_probes if self.blackbox_probes else float("nan")

    @property
    def ratio(self) -> float:
        return self.exporter_cpu_ms_per_round / self.blackbox_cpu_ms_per_probe


@dataclass(frozen=True)
class DaemonComparison:
    targets: int
    interval: timedelta
    blackbox_version: str
    runs: tuple[DaemonRun, ...]

    def median_run(self) -> DaemonRun:
        """The run with the median ratio (the lower middle one of an even count)."""
        ordered = sorted(self.runs, key=lambda run: run.ratio)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def ratios(self) -> tuple[float, float, float]:
        values = [run.ratio for run in self.runs]
        return min(values), statistics.median(values), max(values)


class PacedProbes:
    """``/probe`` at a fixed rate on a few threads until stopped, counting probes and failures."""

    def __init__(self, blackbox: RunningBlackbox, per_second: float) -> None:
        self._blackbox = blackbox
        self._period = PROBING_THREADS / per_second  # each thread's gap between probes
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.probes = self.failures = 0
        self._threads = [threading.Thread(target=self._probe, args=(n,), daemon=True) for n in range(PROBING_THREADS)]

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.probes, self.failures

    def _probe(self, thread_number: int) -> None:
        client = KeepAliveClient(self._blackbox.base_url)
        due = time.monotonic() + self._period * thread_number / PROBING_THREADS
        try:
            while not self._stop.is_set():
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                due += self._period
                status, body = client.get(self._blackbox.probe_path)
                with self._lock:
                    self.probes += 1
                    self.failures += status != 200 or SUCCESS_LINE not in body
        finally:
            client.close()

    def __enter__(self) -> PacedProbes:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def _window(exporter: RunningExporter, blackbox: ManagedProcess, probes: PacedProbes, seconds: float) -> DaemonRun:
    """CPU of both processes over ``seconds``; the exporter's /metrics is read outside the CPU readings, and
    the rounds counted between those reads are scaled to the window between the CPU readings."""
    counted_from, before = read_counters(exporter)
    probes_before, failures_before = probes.counts()
    exporter_cpu, blackbox_cpu, started = exporter.process.cpu_seconds(), blackbox.cpu_seconds(), time.monotonic()
    exporter.process.sleep(seconds)
    exporter_cpu = exporter.process.cpu_seconds() - exporter_cpu
    blackbox_cpu = blackbox.cpu_seconds() - blackbox_cpu
    window_seconds = time.monotonic() - started
    probes_after, failures_after = probes.counts()
    counted_until, after = read_counters(exporter)
    during = after.since(before)
    return DaemonRun(
        exporter_cpu_seconds=exporter_cpu,
        exporter_rounds=during.runs / len(EXPECTED_CHECKS) * window_seconds / (counted_until - counted_from),
        exporter_failures=during.failures,
        blackbox_cpu_seconds=blackbox_cpu,
        blackbox_probes=probes_after - probes_before,
        blackbox_failures=failures_after - failures_before,
        window_seconds=window_seconds,
        load_average=os.getloadavg(),
    )


def measure_daemons(
    simulator: RunningSimulator,
    blackbox: RunningBlackbox,
    work_dir: Path,
    targets: int,
    interval: timedelta,
    intervals_per_run: int,
    runs: int,
) -> DaemonComparison:
    """``runs`` windows of ``intervals_per_run`` intervals each, after the first round and one more interval."""
    config_file = write_exporter_config(
        work_dir / "daemon.yml", simulator, targets, interval, endpoints=simulator.endpoint_targets[:1]
    )
    seconds = interval.total_seconds()
    with running_exporter(config_file) as exporter, PacedProbes(blackbox, targets / seconds) as probes:
        exporter.process.wait_until(
            lambda: get(exporter.base_url, "/-/ready")[0] == 200,
            seconds + READY_TIMEOUT_MARGIN_SECONDS,
            "/-/ready (first round of checks done)",
        )
        exporter.process.sleep(seconds)  # every job past its first-run jitter, the connections warm
        measured = tuple(_window(exporter, blackbox.process, probes, intervals_per_run * seconds) for _ in range(runs))
    return DaemonComparison(targets, interval, blackbox.version, measured)
