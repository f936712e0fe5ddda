"""Measurements of a running exporter: checks on a schedule, and /metrics scrapes."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from .fixtures import EXPECTED_CHECKS, RunningExporter, RunningSimulator, running_exporter, write_exporter_config
from .processes import BenchError, machine_busy_cpu_seconds
from .scrape import ExporterCounters, KeepAliveClient, get, histogram_quantile, parse_counters, sample_count

CHECKS_PER_TARGET = len(EXPECTED_CHECKS)
# A rate the exporter keeps up with: nearly every planned check done, p99 lag under the goal, few overruns.
KEEP_UP_SHARE = 0.98
LAG_P99_LIMIT_SECONDS = 1.0
KEEP_UP_SHARE_OVERRUNS = 0.005
READY_TIMEOUT_MARGIN_SECONDS = 30.0


def interval_for(targets: int, checks_per_minute: int) -> timedelta:
    return timedelta(minutes=targets * CHECKS_PER_TARGET / checks_per_minute)


@dataclass(frozen=True)
class LoadMeasurement:
    targets: int
    interval: timedelta
    window_seconds: float  # between the two CPU readings
    counted_seconds: float  # between the two /metrics requests that bracket the window
    completed: float  # check runs between the two /metrics snapshots
    failed: float
    overruns: float
    cpu_seconds: float
    simulator_cpu_seconds: float
    machine_cpu_seconds: float  # every process on the machine, the two above included
    lag_p50_seconds: float
    lag_p99_seconds: float
    rss_bytes: int
    peak_rss_bytes: int
    cpu_ms_per_check_range: tuple[float, float] | None = None  # over every window, for the kept (median) one

    @property
    def planned_per_minute(self) -> float:
        return self.targets * CHECKS_PER_TARGET * 60 / self.interval.total_seconds()

    @property
    def completed_per_minute(self) -> float:
        return self.completed * 60 / self.counted_seconds

    @property
    def cpu_ms_per_check(self) -> float:
        checks_in_window = self.completed * self.window_seconds / self.counted_seconds
        return 1000 * self.cpu_seconds / checks_in_window if checks_in_window else float("nan")

    def falls_behind(self) -> str:
        """Why this rate is past the knee ("" when the exporter keeps up)."""
        if self.completed_per_minute < KEEP_UP_SHARE * self.planned_per_minute:
            return f"completes {self.completed_per_minute / self.planned_per_minute:.0%} of the planned checks"
        if self.lag_p99_seconds >= LAG_P99_LIMIT_SECONDS:
            return f"p99 scheduling lag {self.lag_p99_seconds:.2f} s"
        if self.overruns > KEEP_UP_SHARE_OVERRUNS * self.completed:
            return f"{self.overruns:,.0f} overruns"
        return ""


def read_counters(exporter: RunningExporter) -> tuple[float, ExporterCounters]:
    """The exporter's counters, and when they were asked for (monotonic clock)."""
    requested = time.monotonic()
    status, body = get(exporter.base_url, "/metrics")
    if status != 200:
        raise BenchError(f"GET /metrics answered {status}")
    return requested, parse_counters(body.decode())


def measure_load(
    simulator: RunningSimulator,
    work_dir: Path,
    targets: int,
    checks_per_minute: int,
    warmup_seconds: float,
    window_seconds: float,
    windows: int,
) -> LoadMeasurement:
    """Run the exporter at a check rate; measure its process over ``windows`` windows after a warm-up.

    Each window is rounded to a whole number of check intervals: every job then runs equally often in
    it whatever its phase (first runs are spread by a hash of the job id, not evenly). /metrics is read
    between windows, outside the CPU readings, so the scrapes' own cost stays out of the CPU figure; the
    check rate is counted between two such reads. The window with the median CPU per check is kept, with
    the range over all windows.
    """
    interval = interval_for(targets, checks_per_minute)
    window_seconds = max(1, round(window_seconds / interval.total_seconds())) * interval.total_seconds()
    config_file = write_exporter_config(
        work_dir / f"load-{targets}-{checks_per_minute}.yml", simulator, targets, interval
    )
    measured: list[LoadMeasurement] = []
    with running_exporter(config_file) as exporter:
        process = exporter.process
        process.sleep(warmup_seconds)
        counted_from, before = read_counters(exporter)
        for _ in range(windows):
            started = time.monotonic()
            cpu_before = process.cpu_seconds()
            simulator_cpu_before = simulator.process.cpu_seconds()
            machine_cpu_before = machine_busy_cpu_seconds()
            process.sleep(window_seconds)
            cpu_seconds = process.cpu_seconds() - cpu_before
            simulator_cpu_seconds = simulator.process.cpu_seconds() - simulator_cpu_before
            machine_cpu_seconds = machine_busy_cpu_seconds() - machine_cpu_before
            measured_seconds = time.monotonic() - started
            rss, peak_rss = process.memory_bytes()
            counted_until, after = read_counters(exporter)
            during = after.since(before)
            measured.append(
                LoadMeasurement(
                    targets=targets,
                    interval=interval,
                    window_seconds=measured_seconds,
                    counted_seconds=counted_until - counted_from,
                    completed=during.runs,
                    failed=during.failures,
                    overruns=during.overruns,
                    cpu_seconds=cpu_seconds,
                    simulator_cpu_seconds=simulator_cpu_seconds,
                    machine_cpu_seconds=machine_cpu_seconds,
                    lag_p50_seconds=histogram_quantile(0.50, during.lag_buckets),
                    lag_p99_seconds=histogram_quantile(0.99, during.lag_buckets),
                    rss_bytes=rss,
                    peak_rss_bytes=peak_rss,
                )
            )
            counted_from, before = counted_until, after
    ordered = sorted(measured, key=lambda m: m.cpu_ms_per_check)
    median = ordered[(len(ordered) - 1) // 2]
    return replace(median, cpu_ms_per_check_range=(ordered[0].cpu_ms_per_check, ordered[-1].cpu_ms_per_check))


# What Prometheus 2.x sends by default; the exporter answers in the text format whatever the header says.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@dataclass(frozen=True)
class MetricsMeasurement:
    targets: int
    background_checks_per_minute: int
    samples: int
    body_bytes: int
    scrape_seconds: list[float]
    cpu_seconds: float

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.scrape_seconds)

    @property
    def p90_ms(self) -> float:
        return 1000 * statistics.quantiles(self.scrape_seconds, n=10)[-1]

    @property
    def cpu_ms_per_scrape(self) -> float:
        return 1000 * self.cpu_seconds / len(self.scrape_seconds)


def _time_scrapes(exporter: RunningExporter, scrapes: int) -> tuple[list[float], bytes, float]:
    """``scrapes`` sequential GET /metrics on one kept-alive connection: durations, last body, exporter CPU."""
    client = KeepAliveClient(exporter.base_url)
    try:
        durations, body = [], b""
        cpu_before = exporter.process.cpu_seconds()
        for _ in range(scrapes):
            started = time.perf_counter()
            status, body = client.get("/metrics", {"Accept": PROMETHEUS_ACCEPT})
            durations.append(time.perf_counter() - started)
            if status != 200:
                raise BenchError(f"GET /metrics answered {status}")
        return durations, body, exporter.process.cpu_seconds() - cpu_before
    finally:
        client.close()


def measure_metrics(
    simulator: RunningSimulator, work_dir: Path, targets: int, interval: timedelta, scrapes: int
) -> MetricsMeasurement:
    """Time ``scrapes`` GET /metrics once every check has a result."""
    config_file = write_exporter_config(work_dir / f"metrics-{targets}.yml", simulator, targets, interval)
    with running_exporter(config_file) as exporter:
        exporter.process.wait_until(
            lambda: get(exporter.base_url, "/-/ready")[0] == 200,
            interval.total_seconds() + READY_TIMEOUT_MARGIN_SECONDS,
            "/-/ready (first round of checks done)",
        )
        durations, body, cpu_seconds = _time_scrapes(exporter, scrapes)
    return MetricsMeasurement(
        targets=targets,
        background_checks_per_minute=round(targets * CHECKS_PER_TARGET * 60 / interval.total_seconds()),
        samples=sample_count(body.decode()),
        body_bytes=len(body),
        scrape_seconds=durations,
        cpu_seconds=cpu_seconds,
    )
