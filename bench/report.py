"""The benchmark's markdown: the machine, then one table per measurement."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from exporter.config import format_duration
from exporter.daemon.app import revision
from exporter.daemon.scheduler import LAG_BUCKETS

from .audit_report import AuditReportMeasurement
from .check_costs import CheckCost
from .daemon_comparison import DaemonComparison
from .memory import MemoryMeasurement
from .scheduled import KEEP_UP_SHARE, KEEP_UP_SHARE_OVERRUNS, LAG_P99_LIMIT_SECONDS, LoadMeasurement, MetricsMeasurement
from .tls_comparison import OpensslFloor, ProbeCpu

MIB = 1024 * 1024
REPOSITORY = Path(__file__).resolve().parent.parent


@dataclass
class Results:
    run: str  # the plan's name: "default" or "quick"
    daemon: DaemonComparison | None = None
    load: list[LoadMeasurement] = field(default_factory=list)
    knee: list[LoadMeasurement] = field(default_factory=list)  # rising rates, ending with the first it falls behind at
    metrics: list[MetricsMeasurement] = field(default_factory=list)  # one per size
    memory: MemoryMeasurement | None = None
    check_costs: list[CheckCost] = field(default_factory=list)
    exporter_checks: dict[str, list[ProbeCpu]] = field(default_factory=dict)  # check name -> rounds
    blackbox: list[ProbeCpu] = field(default_factory=list)  # rounds
    blackbox_skipped_because: str | None = None
    openssl: OpensslFloor | None = None
    audit: AuditReportMeasurement | None = None
    stopped_because: str | None = None  # a step failed: the report holds the steps before it


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or "unknown CPU"


def exporter_revision() -> str:
    """The commit, and whether the exporter package differs from it (the figures are for the files run)."""
    try:
        status = subprocess.run(
            ["git", "-C", str(REPOSITORY), "status", "--porcelain", "--", "exporter"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return revision()
    return f"{revision()} with uncommitted changes in exporter/" if status.strip() else revision()


def machine_line() -> str:
    cpus = len(os.sched_getaffinity(0))
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {cpus} CPUs ({cpu_model()}); Linux {platform.release()}; "
        f"Python {platform.python_version()}; exporter revision {exporter_revision()}"
    )


def _seconds(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return f"> {LAG_BUCKETS[-1]:g} s"  # beyond the histogram's last finite bucket
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _section(title: str, header: list[str], rows: list[list[str]], note: str) -> list[str]:
    return [f"## {title}", "", *_table(header, rows), "", note]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    alignment = [":---", *("---:" for _ in header[1:])]  # text in the first column, figures after it
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _load_rows(load: list[LoadMeasurement], with_verdict: bool) -> tuple[list[str], list[list[str]]]:
    header = [
        "targets",
        "interval",
        "planned checks/min",
        "completed checks/min",
        "failed",
        "overruns",
        "CPU (% of 1 core)",
        "CPU ms/check",
        "range over windows",
        "lag p50",
        "lag p99",
        "RSS MiB",
        "peak RSS MiB",
        "simulator CPU %",
        "machine CPU %",
    ]
    rows = [
        [
            f"{m.targets:,}",
            format_duration(m.interval),
            f"{m.planned_per_minute:,.0f}",
            f"{m.completed_per_minute:,.0f}",
            f"{m.failed:,.0f}",
            f"{m.overruns:,.0f}",
            f"{100 * m.cpu_seconds / m.window_seconds:.0f}",
            f"{m.cpu_ms_per_check:.2f}",
            f"{m.cpu_ms_per_check_range[0]:.2f}-{m.cpu_ms_per_check_range[1]:.2f}" if m.cpu_ms_per_check_range else "",
            _seconds(m.lag_p50_seconds),
            _seconds(m.lag_p99_seconds),
            f"{m.rss_bytes / MIB:.0f}",
            f"{m.peak_rss_bytes / MIB:.0f}",
            f"{100 * m.simulator_cpu_seconds / m.window_seconds:.0f}",
            f"{100 * m.machine_cpu_seconds / m.window_seconds:.0f}",
            *([m.falls_behind() or "yes"] if with_verdict else []),
        ]
        for m in load
    ]
    return header + (["keeps up"] if with_verdict else []), rows


def _load_table(load: list[LoadMeasurement]) -> list[str]:
    header, rows = _load_rows(load, with_verdict=False)
    window = ", ".join(f"{m.window_seconds:.0f}" for m in load)
    return _section(
        "Scheduled checks (exporter process only)",
        header,
        rows,
        f"Window per row (s): {window}, a whole number of check intervals, after a warm-up; each row is the "
        "window with the median CPU per check of consecutive windows. Checks, "
        "failures, overruns and lag are deltas between the two /metrics scrapes that bracket the window; "
        "CPU is /proc/PID/stat utime+stime over the window (scrapes excluded), per check scaled to the "
        "window; RSS is VmRSS at the window's end, peak is VmHWM. CPU % is of one core; machine CPU % is "
        f"every process on the machine ({len(os.sched_getaffinity(0))} CPUs: at most "
        f"{100 * len(os.sched_getaffinity(0))}), so other work running at the same time shows. Lag "
        "percentiles are interpolated "
        f"inside the histogram's buckets as histogram_quantile does (first bucket 0-{LAG_BUCKETS[0] * 1000:g} ms).",
    )


def _knee_table(knee: list[LoadMeasurement]) -> list[str]:
    header, rows = _load_rows(knee, with_verdict=True)
    kept = [m for m in knee if not m.falls_behind()]
    behind = [m for m in knee if m.falls_behind()]
    if behind and kept:
        verdict = (
            f"The knee lies between {kept[-1].planned_per_minute:,.0f} and {behind[0].planned_per_minute:,.0f} "
            f"checks/min: at the latter the exporter {behind[0].falls_behind()}."
        )
    elif behind:
        verdict = f"Already the lowest rate tried is past the knee: the exporter {behind[0].falls_behind()}."
    else:
        verdict = f"The exporter kept up with every rate tried, up to {knee[-1].planned_per_minute:,.0f} checks/min."
    return _section(
        "Finding the knee",
        header,
        rows,
        f"Rates rise until the exporter falls behind: it keeps up while it completes at least {KEEP_UP_SHARE:.0%} of "
        f"the planned checks, the p99 scheduling lag stays under {LAG_P99_LIMIT_SECONDS:g} s and under "
        f"{KEEP_UP_SHARE_OVERRUNS:.1%} of runs overrun. The simulator shares the machine's CPUs: look at the "
        f"machine CPU column before blaming the exporter. {verdict}",
    )


def _memory_table(m: MemoryMeasurement) -> list[str]:
    header = [
        "targets",
        "mailboxes per target",
        "interval",
        "jobs",
        "samples",
        "bytes of /metrics",
        "failing checks",
        "RSS after first round MiB",
        "RSS MiB",
        "peak RSS MiB",
    ]
    row = [
        f"{m.targets:,}",
        f"{m.mailboxes_per_target}",
        format_duration(m.interval),
        f"{m.jobs:,}",
        f"{m.samples:,}",
        f"{m.body_bytes:,}",
        f"{m.failed_checks:,}",
        f"{m.rss_after_first_round / MIB:.0f}",
        f"{m.rss / MIB:.0f}",
        f"{m.peak_rss / MIB:.0f}",
    ]
    return _section(
        "Memory with mailboxes",
        header,
        [row],
        "Targets cycle through the simulator's five (on-prem EWS and Autodiscover signing in with Basic and "
        "NTLM, Exchange Online EWS and Graph with the Entra app, Exchange Online Autodiscover), each with five "
        "mailboxes its side knows, so every per-mailbox check and kept-alive NTLM session is there. RSS is read "
        "when /-/ready first answers and again one interval later; the peak is VmHWM.",
    )


def _check_costs_table(costs: list[CheckCost]) -> list[str]:
    header = [
        "check",
        "runs",
        "failed",
        "CPU ms/check",
        "range over rounds",
        "wall ms/check",
        "requests/check",
        "connections",
        "NTLM handshakes",
        "token requests",
    ]
    rows = [
        [
            c.label,
            f"{c.warmup_runs} + {c.rounds} × {c.runs:,}",
            f"{c.failures:,}",
            f"{c.cpu_ms_per_check:.2f}",
            f"{min(c.cpu_ms_per_check_by_round):.2f}-{max(c.cpu_ms_per_check_by_round):.2f}",
            f"{c.wall_ms_per_check:.1f}",
            f"{c.requests_per_check:.2f}",
            f"{c.connections:,}",
            f"{c.ntlm_handshakes:,}",
            f"{c.token_requests:,}",
        ]
        for c in costs
    ]
    return _section(
        "CPU and requests on the wire per check",
        header,
        rows,
        "Each row is a fresh process running one check on one target one run after another, as the scheduler "
        "does: a warm-up run, then rounds of runs. CPU is time.process_time of that process (every thread, so "
        "NTLM's worker threads too); CPU ms/check is the median round's. Requests, connections and NTLM handshakes "
        "are what the simulator's endpoint saw over all runs, warm-up included; token requests are what Entra ID "
        "saw. One connection and one handshake for hundreds of runs means kept-alive connections are reused; "
        "one token request means the token came from the cache until the process ended.",
    )


def _metrics_table(measurements: list[MetricsMeasurement]) -> list[str]:
    header = [
        "targets",
        "samples",
        "bytes",
        "checks/min meanwhile",
        "scrapes",
        "median ms",
        "p90 ms",
        "exporter CPU ms/scrape",
    ]
    rows = [
        [
            f"{m.targets:,}",
            f"{m.samples:,}",
            f"{m.body_bytes:,}",
            f"{m.background_checks_per_minute:,}",
            f"{len(m.scrape_seconds)}",
            f"{m.median_ms:.1f}",
            f"{m.p90_ms:.1f}",
            f"{m.cpu_ms_per_scrape:.1f}",
        ]
        for m in measurements
    ]
    return _section(
        "GET /metrics (one kept-alive connection, sequential)",
        header,
        rows,
        "Measured after the first round of checks, with checks still running; their CPU is inside the CPU "
        "column. The exporter answers in the text format 0.0.4, here asked for with Prometheus' Accept header.",
    )


def median_round(rounds: list[ProbeCpu]) -> ProbeCpu:
    """The round with the median CPU per probe (the lower middle one of an even count)."""
    ordered = sorted(rounds, key=lambda r: r.cpu_ms_per_probe)
    return ordered[(len(ordered) - 1) // 2]


def _tls_table(results: Results) -> list[str]:
    base = median_round(results.blackbox).cpu_ms_per_probe if results.blackbox else None

    def ratio(cpu_ms: float) -> str:
        return f"{cpu_ms / base:.2f}x" if base else "n/a"

    header = [
        "prober",
        "rounds × probes",
        "failed",
        "probes/s (wall)",
        "CPU ms/probe",
        "range over rounds",
        "vs blackbox_exporter",
    ]

    def row(rounds: list[ProbeCpu], versus: str | None = None) -> list[str]:
        median = median_round(rounds)
        cpu = [r.cpu_ms_per_probe for r in rounds]
        return [
            median.prober,
            f"{len(rounds)} × {median.probes:,}",
            f"{sum(r.failures for r in rounds):,}",
            f"{median.probes / median.wall_seconds:,.0f}",
            f"{median.cpu_ms_per_probe:.3f}",
            f"{min(cpu):.3f}-{max(cpu):.3f}",
            versus or ratio(median.cpu_ms_per_probe),
        ]

    rows: list[list[str]] = []
    if results.blackbox:
        rows.append(row(results.blackbox))
    if results.blackbox_skipped_because:
        rows.append(["blackbox_exporter: skipped, " + results.blackbox_skipped_because, *[""] * 6])
    if "tls" in results.exporter_checks:
        rows.append(row(results.exporter_checks["tls"]))
    if "reachability" in results.exporter_checks:
        rows.append(row(results.exporter_checks["reachability"], "not a TLS check"))
    if results.load:
        busiest = max(results.load, key=lambda m: m.planned_per_minute)
        rows.append(
            [
                f"exporter: scheduled, mean of reachability+tls ({busiest.targets:,} targets, "
                f"{busiest.planned_per_minute:,.0f}/min)",
                f"1 × {busiest.completed:,.0f}",
                f"{busiest.failed:,.0f}",
                f"{busiest.completed_per_minute / 60:,.0f}",
                f"{busiest.cpu_ms_per_check:.3f}",
                "",
                "mixes both checks",
            ]
        )
    lines = ["## CPU per TLS check", "", *_table(header, rows), ""]
    lines.append(
        "blackbox_exporter: module tcp + tls, driven through its /probe endpoint (its HTTP handling is "
        "included), CPU of its process. The exporter's execute() rows: time.process_time of a fresh "
        "process running the check, excluding start-up and a warm-up round. Rounds alternate between the "
        "probers; CPU ms/probe and probes/s are those of the median round. The scheduled row is the "
        "busiest scheduled-checks row above."
    )
    if results.openssl is not None:
        o = results.openssl
        lines += [
            "",
            f"Floor, `openssl s_time -new` (client, one connection at a time): {o.connections:,} handshakes in "
            f"{o.real_seconds} s ({o.handshakes_per_second:,.0f}/s), {o.connections_per_user_second:,.0f} "
            f"connections per user CPU second = {o.client_cpu_ms_per_handshake:.3f} ms user CPU per handshake"
            f" ({ratio(o.client_cpu_ms_per_handshake)} of blackbox_exporter).",
        ]
    return lines


def _audit_table(measured: AuditReportMeasurement) -> list[str]:
    seconds = sorted(run.seconds for run in measured.runs)
    lines = [
        "### Audit report: 12 months of 50 targets (VictoriaMetrics)",
        "",
        f"{measured.series} series, {measured.samples:,} samples, imported in {measured.import_seconds:.0f} s; "
        "`report --format json,csv,html`, one process per month.",
        "",
        "| month | wall time | peak RSS |",
        "|---|---:|---:|",
    ]
    lines += [f"| {run.month} | {run.seconds:.1f} s | {run.peak_rss_bytes / MIB:.0f} MiB |" for run in measured.runs]
    peak = max(run.peak_rss_bytes for run in measured.runs)
    lines.append(f"| **12 months** | {sum(seconds):.1f} s (median {seconds[len(seconds) // 2]:.1f} s) | "
                 f"{peak / MIB:.0f} MiB |")  # fmt: skip
    return lines


def _daemon_table(d: DaemonComparison, openssl: OpensslFloor | None) -> list[str]:
    low, median, high = d.ratios
    header = [
        "run",
        "exporter CPU ms/round",
        "rounds",
        "failed checks",
        "blackbox_exporter CPU ms/probe",
        "probes",
        "failed probes",
        "ratio",
        "load average (1, 5, 15 min)",
    ]
    rows = [
        [
            str(number),
            f"{run.exporter_cpu_ms_per_round:.3f}",
            f"{run.exporter_rounds:,.0f}",
            f"{run.exporter_failures:,.0f}",
            f"{run.blackbox_cpu_ms_per_probe:.3f}",
            f"{run.blackbox_probes:,}",
            f"{run.blackbox_failures:,}",
            f"{run.ratio:.2f}",
            ", ".join(f"{value:.2f}" for value in run.load_average),
        ]
        for number, run in enumerate(d.runs, 1)
    ]
    window = d.runs[0].window_seconds if d.runs else 0.0
    lines = [
        "## The exporter as deployed beside blackbox_exporter",
        "",
        *_table(header, rows),
        "",
        f"Ratio (exporter CPU per target round / blackbox_exporter CPU per probe) over {len(d.runs)} runs: "
        f"min {low:.2f}, median {median:.2f}, max {high:.2f}.",
        "",
        f"The exporter's console script with {d.targets} targets every {format_duration(d.interval)} and its "
        "default checks (reachability and tls) on one simulator endpoint; a round is both results of one "
        f"target. blackbox_exporter {d.blackbox_version}, module tcp + tls with the simulator's CA file, "
        f"probed through /probe on the same endpoint at the same rate ({d.targets} per "
        f"{format_duration(d.interval)}), during the same windows of {window:.0f} s. CPU is utime+stime of "
        "each whole process from /proc/PID/stat. The machine is shared: the ratio within one window moves "
        "far less with other load than either figure does, and the load average says how busy it was.",
    ]
    if openssl is not None:
        lines += [
            "",
            f"Floor, `openssl s_time -new` on the same endpoint: {openssl.client_cpu_ms_per_handshake:.3f} ms "
            "user CPU per handshake (client side).",
        ]
    return lines


def render(results: Results) -> str:
    lines = ["# bems-exchange-exporter benchmark", "", f"Run: {results.run}; {machine_line()}", ""]
    if results.daemon is not None:
        lines += [*_daemon_table(results.daemon, results.openssl), ""]
    if results.load:
        lines += [*_load_table(results.load), ""]
    if results.knee:
        lines += [*_knee_table(results.knee), ""]
    if results.metrics:
        lines += [*_metrics_table(results.metrics), ""]
    if results.memory is not None:
        lines += [*_memory_table(results.memory), ""]
    if results.check_costs:
        lines += [*_check_costs_table(results.check_costs), ""]
    if results.exporter_checks or results.blackbox or results.blackbox_skipped_because:
        lines += [*_tls_table(results), ""]
    if results.audit is not None:
        lines += [*_audit_table(results.audit), ""]
    if results.stopped_because is not None:
        lines += ["**The run stopped early.** The tables above are the steps before the one that failed:", ""]
        lines += ["```", results.stopped_because, "```", ""]
    return "\n".join(lines)
